"""TLS terminated by `tenantry serve`, the key-exchange groups it and the upstream client prefer, and
what `/health` says about post-quantum key exchange, all on loopback with a certificate made here."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tenantry import tls
from tenantry.app import create_app
from tenantry.cli import main
from tenantry.cli.common import EXIT_USAGE
from tenantry.cli.serve import server_config
from tenantry.settings import Settings
from tests import conftest
from tests.conftest import ADMIN_KEY, JWT_SECRET, OPS, OPS_KEY, Admin, eventually, free_port, serve, serve_config
from tests.federation.test_upstreams import add_upstream
from tests.upstream_servers import FixtureUpstream

# What a user would compute: OpenSSL 3.5 is the first release with the ML-KEM hybrid groups.
PQ_EXPECTED = ssl.OPENSSL_VERSION_INFO >= (3, 5)


def make_certificate(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https_gateway(settings: Settings, certificate: tuple[Path, Path]) -> Iterator[str]:
    """The gateway as `tenantry serve` runs it with TENANTRY_TLS_CERTFILE/KEYFILE set."""
    cert, key = certificate
    s = conftest.test_settings(tls_certfile=str(cert), tls_keyfile=str(key))
    config = server_config(s, lambda: create_app(s), host="127.0.0.1", port=free_port(), **conftest.SERVER_OPTIONS)
    with serve_config(config) as (url, _server):
        yield url


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


async def test_the_gateway_serves_health_and_tool_calls_over_https(
    https_gateway: str, certificate: tuple[Path, Path]
) -> None:
    cert, _ = certificate
    assert https_gateway.startswith("https://")
    async with httpx.AsyncClient(base_url=https_gateway, verify=trusting(cert), timeout=30) as client:
        health = await client.get("/health", headers=OPS)
        assert health.status_code == 200, health.text
        check = health.json()["checks"]["tls"]
        assert check["status"] == "ok"
        assert check["serving_tls"] is True
        assert check["openssl"] == ssl.OPENSSL_VERSION
        # This machine's OpenSSL decides: 3.0-3.4 have no ML-KEM, 3.5+ offer it and it comes first.
        assert check["post_quantum_available"] is PQ_EXPECTED
        assert check["post_quantum_preferred"] is PQ_EXPECTED
        assert check["groups"][0] == ("X25519MLKEM768" if PQ_EXPECTED else "X25519")
        assert ("X25519MLKEM768" in check["groups"]) is PQ_EXPECTED
        # Public /health stays a summary.
        assert (await client.get("/health")).json()["checks"]["tls"] == {"status": "ok"}

        admin_headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=https_gateway, verify=trusting(cert), headers=admin_headers) as admin:
            tenant = await Admin(admin).create_tenant()
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "data_put", "arguments": {"key": "k", "value": {"over": "tls"}}},
        }
        headers = {**tenant.headers, "Accept": "application/json, text/event-stream"}
        r = await client.post("/mcp", json=call, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["result"]["isError"] is False
        get = {**call, "id": 2, "params": {"name": "data_get", "arguments": {"key": "k"}}}
        r = await client.post("/mcp", json=get, headers=headers)
        assert r.json()["result"]["structuredContent"]["value"] == {"over": "tls"}

    # A client that does not trust the certificate is refused by its own verification: real TLS.
    async with httpx.AsyncClient(base_url=https_gateway, timeout=10) as stranger:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await stranger.get("/health")


async def test_tenantry_serve_terminates_tls_as_a_process(settings: Settings, certificate: tuple[Path, Path]) -> None:
    """`tenantry serve` as an operator runs it, with the TLS settings in its environment."""
    cert, key = certificate
    port = free_port()
    env = {
        **os.environ,
        "TENANTRY_ENVIRONMENT": "test",
        "TENANTRY_DATABASE_URL": settings.database_url,
        "TENANTRY_REDIS_URL": settings.redis_url,
        "TENANTRY_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "TENANTRY_ADMIN_API_KEY": ADMIN_KEY,
        "TENANTRY_OPS_API_KEY": OPS_KEY,
        "TENANTRY_JWT_SECRET": JWT_SECRET,
        "TENANTRY_TLS_CERTFILE": str(cert),
        "TENANTRY_TLS_KEYFILE": str(key),
        "TENANTRY_LOG_LEVEL": "warning",
    }
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tenantry.cli", "serve", "--port", str(port)],
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(verify=trusting(cert), timeout=5) as client:

            async def healthy() -> dict[str, Any] | None:
                assert process.returncode is None, "tenantry serve exited"
                try:
                    r = await client.get(f"https://127.0.0.1:{port}/health", headers=OPS)
                except httpx.TransportError:
                    return None
                found: dict[str, Any] = r.json()["checks"]["tls"]
                return found

            check = await eventually(healthy, within=30, what="tenantry serve answering over https")
        assert check["serving_tls"] is True
        assert check["post_quantum_available"] is PQ_EXPECTED
    finally:
        process.terminate()
        _, err = await process.communicate()
    assert b"Traceback" not in err


async def test_plain_gateway_reports_it_does_not_serve_tls(http: httpx.AsyncClient) -> None:
    check = (await http.get("/health", headers=OPS)).json()["checks"]["tls"]
    assert check["serving_tls"] is False
    assert check["post_quantum_available"] is PQ_EXPECTED


async def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
    """One TLS handshake on loopback; the protocol version negotiated, or the client's error."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="localhost")
    except OSError as exc:  # an alert (SSLError) or the server dropping the handshake (reset)
        return f"refused: {type(exc).__name__}"
    finally:
        listener.close()
    try:
        assert await reader.read() == b"ok"
        version: str = writer.get_extra_info("ssl_object").version()
        return version
    finally:
        writer.close()


async def test_the_configured_groups_are_what_each_side_offers(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server = tls.server_context(str(cert), str(key), "secp384r1")
    client = tls.client_context("X25519")
    client.load_verify_locations(str(cert))
    # Nothing in common: the handshake fails, so each side offers exactly the groups it was given.
    assert (await _handshake(server, client)).startswith("refused")
    both = tls.client_context("X25519MLKEM768:X25519:secp384r1")
    both.load_verify_locations(str(cert))
    assert await _handshake(server, both) == "TLSv1.3"
    # The default lists meet (on the hybrid group where both have OpenSSL 3.5+).
    default = tls.client_context()
    default.load_verify_locations(str(cert))
    assert await _handshake(tls.server_context(str(cert), str(key)), default) == "TLSv1.3"


def test_the_client_context_verifies_and_prefers_post_quantum_where_available() -> None:
    context = tls.client_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert tls.supported_groups(tls.DEFAULT_GROUPS)[0] == ("X25519MLKEM768" if PQ_EXPECTED else "X25519")
    assert tls.post_quantum_available() is PQ_EXPECTED
    assert tls.supported_groups("X25519MLKEM768,bogus,secp256r1") == (
        ["X25519MLKEM768", "secp256r1"] if PQ_EXPECTED else ["secp256r1"]
    )


def _serve(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    code = main(["serve", "--port", str(free_port()), *flags])
    return code, capsys.readouterr().err


def test_bad_tls_settings_stop_serve_with_a_clear_error(
    tmp_path: Path, certificate: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.setenv("TENANTRY_DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:1/none")  # never reached
    cert, key = certificate
    code, err = _serve(capsys, "--tls-certfile", str(tmp_path / "missing.crt"))
    assert code == EXIT_USAGE
    assert "tls_file_unreadable" in err
    assert "missing.crt" in err
    assert "No such file" in err
    assert "Traceback" not in err

    _, other_key = make_certificate(tmp_path, "other")
    code, err = _serve(capsys, "--tls-certfile", str(cert), "--tls-keyfile", str(other_key))
    assert code == EXIT_USAGE
    assert "tls_invalid_certificate" in err
    assert "does not belong to the certificate" in err
    assert "Traceback" not in err

    not_pem = tmp_path / "junk.crt"
    not_pem.write_text("hello")
    code, err = _serve(capsys, "--tls-certfile", str(not_pem), "--tls-keyfile", str(key))
    assert code == EXIT_USAGE
    assert "is not usable PEM" in err

    code, err = _serve(capsys, "--tls-certfile", str(cert), "--tls-keyfile", str(key), "--tls-groups", "bogus:nope")
    assert code == EXIT_USAGE
    assert "tls_invalid_groups" in err

    monkeypatch.setenv("TENANTRY_TLS_KEYFILE", str(key))
    code, err = _serve(capsys)
    assert code == EXIT_USAGE
    assert "TENANTRY_TLS_KEYFILE is set without TENANTRY_TLS_CERTFILE" in err


@pytest.fixture(scope="module")
def https_upstream(certificate: tuple[Path, Path]) -> Iterator[str]:
    """The fixture MCP server, served over HTTPS with the test certificate."""
    cert, key = certificate
    upstream = FixtureUpstream()
    config = uvicorn.Config(
        upstream.app(),
        host="127.0.0.1",
        port=free_port(),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        **conftest.SERVER_OPTIONS,
    )
    with serve_config(config) as (url, _server):
        try:
            yield url
        finally:
            upstream.release()


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
async def test_an_https_upstream_is_called_through_the_gateway(
    settings: Settings,
    certificate: tuple[Path, Path],
    https_upstream: str,
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, _ = certificate
    # The gateway trusts the system store; SSL_CERT_FILE points it at this test's CA, as a user would.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    url = f"{https_upstream}/{'sse' if transport == 'sse' else 'mcp'}"
    with serve(settings) as gateway:
        async with httpx.AsyncClient(
            base_url=gateway, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        ) as http:
            admin = Admin(http)
            tenant = await admin.create_tenant()
            await add_upstream(admin, tenant, url, "alpha", transport=transport)
            call = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "fx__echo", "arguments": {"text": "over https"}},
            }
            headers = {**tenant.headers, "Accept": "application/json, text/event-stream"}
            r = await http.post("/mcp", json=call, headers=headers)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["isError"] is False, result
    assert "over https" in result["content"][0]["text"]
