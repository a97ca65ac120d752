"""TLS contexts that prefer the hybrid post-quantum key exchange wherever the linked OpenSSL has it.

Python 3.11's `ssl` can choose one elliptic curve (`set_ecdh_curve`, which cannot even name X25519)
but not the list of TLS 1.3 key-exchange groups, and the hybrid ML-KEM group `X25519MLKEM768` is
a group, not a curve. So the list is set on each context with OpenSSL's own call,
`SSL_CTX_set1_groups_list` (a macro over `SSL_CTX_ctrl`), reached through ctypes on the library
Python's `_ssl` is linked to. The `SSL_CTX *` is read from the `SSLContext` object and checked
against Python's own view of that context before anything is written to it; when any of that
cannot be done (another interpreter, an unexpected layout) the context keeps OpenSSL's default
groups and `groups_applied` says so. A process-wide `OPENSSL_CONF` would also work, but only when
set before the interpreter starts, and it would change every TLS context in the process.

Each group is probed on its own, so a list naming groups this OpenSSL lacks (ML-KEM on OpenSSL
3.0-3.4) keeps the ones it has, in order: the same setting is right on every host.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import ssl
from collections.abc import Sequence
from typing import Any

from tenantry.errors import BadRequest

log = logging.getLogger(__name__)

PQ_GROUP = "X25519MLKEM768"
# The post-quantum hybrid first, then what OpenSSL 3.0 offers by default, in its order.
DEFAULT_GROUPS = "X25519MLKEM768:X25519:secp256r1:X448:secp384r1:secp521r1:ffdhe2048:ffdhe3072"
_SSL_CTRL_SET_GROUPS_LIST = 92  # OpenSSL's ssl.h: SSL_CTX_set1_groups_list(ctx, s) is SSL_CTX_ctrl(ctx, 92, 0, s)


class TlsConfigError(BadRequest):
    """The TLS settings cannot work (a missing file, a key that does not match its certificate)."""


def parse_groups(groups: str | Sequence[str]) -> list[str]:
    """`"A:B"` (OpenSSL's syntax), `"A,B"` or a list: the group names, in order."""
    items = groups.replace(",", ":").split(":") if isinstance(groups, str) else list(groups)
    return [g.strip() for g in items if g.strip()]


@functools.cache
def _openssl() -> Any:
    """libssl as `_ssl` links it, with the two calls used here typed; None when it cannot be reached."""
    try:
        import _ssl

        # dlsym on the extension's handle searches its dependencies too: the very libssl `ssl` uses.
        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    except (ImportError, OSError, AttributeError, TypeError):
        return None
    return lib


def _ctx_pointer(lib: Any, context: ssl.SSLContext) -> int | None:
    """The context's `SSL_CTX *`: CPython's PySSLContext holds it right after the object header. Trusted
    only when OpenSSL, asked through it, reports the options and verify mode Python reports."""
    if type(context).__mro__[-2] is not ssl.SSLContext.__mro__[-2]:  # the C type CPython defines
        return None
    try:
        pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
        if not pointer:
            return None
        same = lib.SSL_CTX_get_options(pointer) == int(context.options)
        # OpenSSL's SSL_VERIFY_PEER (1) and FAIL_IF_NO_PEER_CERT (2) as Python's CERT_* values.
        bits = lib.SSL_CTX_get_verify_mode(pointer) & 3
        mode = {0: ssl.CERT_NONE, 1: ssl.CERT_OPTIONAL, 3: ssl.CERT_REQUIRED}.get(bits)
        same = same and mode == context.verify_mode
    except (ValueError, TypeError, OSError):
        return None
    return pointer if same else None


def _set_list(lib: Any, pointer: int, groups: Sequence[str]) -> bool:
    value = ctypes.c_char_p(":".join(groups).encode("ascii"))
    return bool(lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, ctypes.cast(value, ctypes.c_void_p)))


@functools.cache
def _known(group: str) -> bool:
    """Whether the linked OpenSSL offers `group` (probed on a throwaway context)."""
    lib = _openssl()
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pointer = None if lib is None else _ctx_pointer(lib, probe)
    return pointer is not None and group.isascii() and _set_list(lib, pointer, [group])


def supported_groups(groups: str | Sequence[str]) -> list[str]:
    """The groups of `groups` this OpenSSL offers, in the given order (empty when groups cannot be set)."""
    return [g for g in parse_groups(groups) if _known(g)]


def can_set_groups() -> bool:
    return _known("X25519") or _known("secp256r1")


def post_quantum_available() -> bool:
    """Whether the linked OpenSSL offers the hybrid ML-KEM group (OpenSSL 3.5+) and it can be set here."""
    return _known(PQ_GROUP)


def apply_groups(context: ssl.SSLContext, groups: str | Sequence[str]) -> list[str]:
    """Make `context` offer `groups` (those this OpenSSL has), in that order; return what was set
    (empty: the context keeps OpenSSL's default groups)."""
    wanted = parse_groups(groups)
    usable = supported_groups(wanted)
    lib = _openssl()
    pointer = None if lib is None else _ctx_pointer(lib, context)
    if not usable or pointer is None:
        return []
    if any(_set_list(lib, pointer, form) for form in _openssl_forms(usable)):
        return usable
    return []


def _openssl_forms(groups: list[str]) -> list[list[str]]:
    """How to say `groups` to this OpenSSL, best first. From 3.5 a list may say which groups a client
    sends key shares for (`*`) and rank groups in tuples (`/`): the hybrid group alone in the first
    tuple, so a server picks it whenever the client has it, and shares for it and the next group, so
    a client reaches a server without ML-KEM in one round trip (OpenSSL 3.5's own default does the
    same). Older versions take the plain list."""
    forms = [groups]
    if ssl.OPENSSL_VERSION_INFO >= (3, 5) and len(groups) > 1 and groups[0] == PQ_GROUP:
        forms.insert(0, [f"*{groups[0]}/*{groups[1]}", *groups[2:]])
    return forms


def client_context(groups: str | Sequence[str] = DEFAULT_GROUPS) -> ssl.SSLContext:
    """The context every outbound TLS connection of the gateway uses: the system's trust store
    (`SSL_CERT_FILE`/`SSL_CERT_DIR` point it elsewhere), host names checked, `groups` preferred."""
    context = ssl.create_default_context()
    apply_groups(context, groups)
    return context


def server_context(certfile: str, keyfile: str | None, groups: str | Sequence[str] = DEFAULT_GROUPS) -> ssl.SSLContext:
    """The context `tenantry serve` terminates TLS with (TLS 1.2+), or a `TlsConfigError` saying which
    file is wrong and how, before anything listens."""
    wanted = parse_groups(groups)
    if not supported_groups(wanted) and can_set_groups():
        raise TlsConfigError(
            f"none of the TLS groups {':'.join(wanted)!r} is offered by {ssl.OPENSSL_VERSION}",
            code="tls_invalid_groups",
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    for label, path in (("certificate", certfile), ("key", keyfile)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TlsConfigError(
                f"the TLS {label} file {path!r} cannot be read: {exc.strerror}", code="tls_file_unreadable"
            ) from None
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc).upper():
            detail = f"the TLS key {keyfile or certfile!r} does not belong to the certificate {certfile!r}"
        else:
            detail = f"the TLS certificate {certfile!r} or key {keyfile or certfile!r} is not usable PEM: {reason}"
        raise TlsConfigError(detail, code="tls_invalid_certificate") from None
    applied = apply_groups(context, wanted)
    dropped = [g for g in wanted if g not in applied]
    if dropped and applied:
        log.info("TLS groups not offered by %s, left out: %s", ssl.OPENSSL_VERSION, ":".join(dropped))
    return context


def status(groups: str | Sequence[str], *, serving_tls: bool) -> dict[str, Any]:
    """What `/health` says about TLS: informational, never a failure."""
    applied = supported_groups(groups)
    return {
        "status": "ok",
        "serving_tls": serving_tls,
        "openssl": ssl.OPENSSL_VERSION,
        "post_quantum_available": post_quantum_available(),
        "post_quantum_preferred": bool(applied) and applied[0] == PQ_GROUP,
        "groups": applied,
        "groups_applied": bool(applied),
    }
