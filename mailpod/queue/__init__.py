"""The durable outbound queue: store (files on the pod volume), scheduler, bounces and its CLI."""
