"""An ACME client for DNS-01 orders, on the `acme` library (Certbot's).

One `issue()` call registers (or finds) the account, orders a certificate for the hosts,
publishes every challenge TXT through the `TxtPublisher`, waits until the zones' authoritative
servers answer them, answers the challenges, finalizes and withdraws the TXT values again
whatever happened. The library is synchronous (requests), so its calls run in a worker thread;
publishing stays on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwa import ES256, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA

from letterbox.acme.challenge import TxtPublisher, challenge_name

log = logging.getLogger("letterbox.acme")

USER_AGENT = "letterbox-acme"
ORDER_TIMEOUT = timedelta(minutes=3)


class AcmeError(RuntimeError):
    """An order did not produce a certificate; the message says which step failed and why."""


@dataclass(frozen=True)
class IssuedCertificate:
    chain_pem: str
    """The leaf first, then the intermediates (what a TLS server sends)."""
    key_pem: str
    not_before: datetime
    not_after: datetime
    serial: int
    hosts: tuple[str, ...]


def generate_account_key() -> str:
    """A new ACME account key (ECDSA P-256: small JWS signatures), as PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def generate_certificate_key() -> str:
    """The certificate's key: RSA 2048, which every SMTP peer and IMAP client still accepts."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def describe_certificate(chain_pem: str) -> tuple[datetime, datetime, int, tuple[str, ...]]:
    """not-before, not-after, serial and DNS names of the chain's leaf."""
    leaf = x509.load_pem_x509_certificate(chain_pem.encode())
    try:
        names = tuple(
            leaf.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.DNSName)
        )
    except x509.ExtensionNotFound:
        names = ()
    return leaf.not_valid_before_utc, leaf.not_valid_after_utc, leaf.serial_number, names


def _jwk(account_key_pem: str) -> tuple[JWK, JWASignature]:
    key = serialization.load_pem_private_key(account_key_pem.encode(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return JWKEC(key=key), ES256
    if isinstance(key, rsa.RSAPrivateKey):
        return JWKRSA(key=key), RS256
    raise AcmeError("the ACME account key must be an ECDSA P-256 or RSA key")


class AcmeIssuer:
    """Issues certificates from one ACME directory with one account."""

    def __init__(
        self,
        directory_url: str,
        account_key_pem: str,
        *,
        email: str | None = None,
        ca_bundle: str | None = None,
        timeout: timedelta = ORDER_TIMEOUT,
    ) -> None:
        self.directory_url = directory_url
        self.email = email
        self.timeout = timeout
        self._key, alg = _jwk(account_key_pem)
        self._net = client.ClientNetwork(
            self._key, alg=alg, user_agent=USER_AGENT, timeout=int(timeout.total_seconds())
        )
        if ca_bundle is not None:
            # requests takes a CA bundle path where the library's annotation says bool.
            self._net.verify_ssl = ca_bundle  # type: ignore[assignment]
        self._client: client.ClientV2 | None = None

    # --- synchronous library calls (worker thread) -------------------------------------------

    def _account(self) -> client.ClientV2:
        if self._client is not None:
            return self._client
        directory = client.ClientV2.get_directory(self.directory_url, self._net)
        acme = client.ClientV2(directory, self._net)
        registration = messages.NewRegistration.from_data(
            email=self.email, terms_of_service_agreed=True
        )
        try:
            acme.new_account(registration)
        except errors.ConflictError as existing:
            # The key already has an account (the usual case after the first run): use it.
            account = messages.RegistrationResource(
                uri=existing.location, body=messages.Registration()
            )
            acme.query_registration(account)
        self._client = acme
        return acme

    def _order(
        self, hosts: Sequence[str], csr_pem: bytes
    ) -> tuple[messages.OrderResource, list[tuple[str, str, messages.ChallengeBody]]]:
        acme = self._account()
        order = acme.new_order(csr_pem)
        wanted: list[tuple[str, str, messages.ChallengeBody]] = []
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue  # validated recently for this account: nothing to publish
            host = authorization.body.identifier.value
            dns01 = next(
                (c for c in authorization.body.challenges if isinstance(c.chall, challenges.DNS01)),
                None,
            )
            if dns01 is None:
                raise AcmeError(f"the CA offers no dns-01 challenge for {host}")
            assert isinstance(dns01.chall, challenges.DNS01)
            value = dns01.chall.validation(self._key)
            wanted.append((challenge_name(host), value, dns01))
        return order, wanted

    def _answer_and_finalize(
        self,
        order: messages.OrderResource,
        answers: Sequence[tuple[str, str, messages.ChallengeBody]],
    ) -> str:
        acme = self._account()
        for _, _, challenge in answers:
            acme.answer_challenge(challenge, challenge.response(self._key))
        deadline = datetime.now() + self.timeout  # the library compares naive local times
        final = acme.poll_and_finalize(order, deadline)
        if not final.fullchain_pem:
            raise AcmeError("the CA finalized the order without a certificate")
        return final.fullchain_pem

    # --- the async entry point ----------------------------------------------------------------

    async def issue(self, hosts: Sequence[str], publisher: TxtPublisher) -> IssuedCertificate:
        """A certificate for `hosts` (the first is the subject), validated over DNS-01."""
        if not hosts:
            raise AcmeError("no hosts to certify")
        key_pem = await asyncio.to_thread(generate_certificate_key)
        csr_pem = crypto_util.make_csr(key_pem.encode(), list(hosts))
        try:
            order, answers = await asyncio.to_thread(self._order, hosts, csr_pem)
        except (errors.Error, messages.Error, OSError) as error:
            raise AcmeError(f"ordering from {self.directory_url} failed: {error}") from error
        published: list[tuple[str, str]] = []
        try:
            for name, value, _ in answers:
                try:
                    await publisher.publish(name, value)
                except Exception as error:
                    raise AcmeError(f"publishing TXT {name} failed: {error}") from error
                published.append((name, value))
            if published:
                try:
                    await publisher.wait_visible(published)
                except AcmeError:
                    raise
                except Exception as error:
                    raise AcmeError(
                        f"checking the challenge TXT records failed: {error}"
                    ) from error
            try:
                chain = await asyncio.to_thread(self._answer_and_finalize, order, answers)
            except errors.ValidationError as error:
                problems = "; ".join(
                    f"{a.body.identifier.value}: {c.error}"
                    for a in error.failed_authzrs
                    for c in a.body.challenges
                    if c.error is not None
                )
                raise AcmeError(f"the CA could not validate DNS-01: {problems}") from error
            except (errors.Error, messages.Error, OSError) as error:
                raise AcmeError(f"finalizing the order failed: {error}") from error
        finally:
            for name, value in published:
                try:
                    await publisher.withdraw(name, value)
                except Exception as error:  # a leftover TXT is harmless; the next run retries
                    log.warning("could not withdraw TXT %s: %s", name, error)
        not_before, not_after, serial, names = describe_certificate(chain)
        log.info(
            "issued a certificate for %s (serial %x, until %s)",
            ", ".join(hosts),
            serial,
            not_after.astimezone(UTC).isoformat(),
        )
        return IssuedCertificate(chain, key_pem, not_before, not_after, serial, names)
