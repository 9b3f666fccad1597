"""DNS publishing: one `DnsProvider` Protocol, its implementations, and the pure plan."""
