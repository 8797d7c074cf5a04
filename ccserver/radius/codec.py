"""RADIUS wire codec (RFC 2865, 2866, 2869, 3162, 5176), sans-I/O: bytes in, packets out, and back.

The dictionary shipped next to this module is parsed once, with pyrad's parser, into plain
lookup tables; pyrad's Packet class is never used on the hot path: decoding, verifying and
answering a typical Access-Request through pyrad's AuthPacket costs about five times what it
costs here.

A datagram either decodes completely or raises RadiusError: every length is checked when the
packet is decoded, so reading an attribute afterwards cannot fail. RadiusError.reason is the
`reason` label of ccserver_dropped_packets_total.

Security decisions:
- Message-Authenticator is the first attribute of every Access-Accept, -Reject and -Challenge we
  encode, and of every request we encode unless the caller opts out (BlastRADIUS,
  CVE-2024-3596).
- Every comparison of an authenticator uses hmac.compare_digest.
- A packet with more than one Message-Authenticator is malformed (RFC 3579 section 3.2).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import importlib
import importlib.resources
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final, Protocol, cast

from pyrad.dictionary import Dictionary

# Found through the package, not this module's __file__ (which a mypyc build sets otherwise).
DICTIONARY_PATH: Final = Path(str(importlib.resources.files("ccserver.radius") / "dictionary"))

HEADER_LENGTH: Final = 20
# RFC 2865 section 3: "The maximum length is 4096."
MAX_PACKET_LENGTH: Final = 4096
MAX_VALUE_LENGTH: Final = 253
# A VSA value travels inside type, length, vendor id (4), vendor type and vendor length.
MAX_VSA_VALUE_LENGTH: Final = 255 - 2 - 4 - 2
# RFC 2865 section 5.2: the hidden password is 16 to 128 octets.
MAX_PASSWORD_LENGTH: Final = 128
# One entry per distinct shared secret (one per NAS client); the bound only guards memory
# against a misuse such as a secret per request.
KEYED_SECRETS_MAX: Final = 4096
ENCODED_CACHE_MAX: Final = 4096  # attribute encodings remembered (see _encode_attribute)

VENDOR_SPECIFIC: Final = 26
MESSAGE_AUTHENTICATOR: Final = 80
PROXY_STATE: Final = 33
USER_PASSWORD: Final = 2
CHAP_PASSWORD: Final = 3
CHAP_CHALLENGE: Final = 60
REPLY_MESSAGE: Final = 18
CISCO: Final = 9
CISCO_AVPAIR: Final = (CISCO, 1)

_ZERO16: Final = bytes(16)
_MA_PLACEHOLDER: Final = bytes((MESSAGE_AUTHENTICATOR, 18)) + _ZERO16
_HEADER: Final = struct.Struct("!BBH")
_U32: Final = struct.Struct("!I")
_I32: Final = struct.Struct("!i")
_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")


class Code(enum.IntEnum):
    ACCESS_REQUEST = 1
    ACCESS_ACCEPT = 2
    ACCESS_REJECT = 3
    ACCOUNTING_REQUEST = 4
    ACCOUNTING_RESPONSE = 5
    ACCESS_CHALLENGE = 11
    STATUS_SERVER = 12  # RFC 5997; FreeRADIUS proxies probe servers with it
    DISCONNECT_REQUEST = 40
    DISCONNECT_ACK = 41
    DISCONNECT_NAK = 42
    COA_REQUEST = 43
    COA_ACK = 44
    COA_NAK = 45


class AcctStatusType(enum.IntEnum):
    """Values of Acct-Status-Type (RFC 2866 section 5.1) that ccserver acts on."""

    START = 1
    STOP = 2
    INTERIM_UPDATE = 3
    ACCOUNTING_ON = 7
    ACCOUNTING_OFF = 8


_CODES: Final[dict[int, Code]] = {c.value: c for c in Code}
# Requests whose Request Authenticator is an MD5 over the packet (RFC 2866 section 3, RFC 5176
# section 3.3); an Access-Request's is random.
_SIGNED_REQUESTS: Final = frozenset(
    (Code.ACCOUNTING_REQUEST, Code.DISCONNECT_REQUEST, Code.COA_REQUEST)
)
_RANDOM_AUTHENTICATOR_REQUESTS: Final = frozenset((Code.ACCESS_REQUEST, Code.STATUS_SERVER))
_REQUESTS: Final = _SIGNED_REQUESTS | _RANDOM_AUTHENTICATOR_REQUESTS
_ACCESS_REPLIES: Final = frozenset((Code.ACCESS_ACCEPT, Code.ACCESS_REJECT, Code.ACCESS_CHALLENGE))

REASONS: Final = frozenset(
    (
        "malformed",
        "bad_authenticator",
        "bad_message_authenticator",
        "missing_message_authenticator",
    )
)


class RadiusError(ValueError):
    """A received datagram that must be dropped; `reason` labels the drop counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- hashing ------------------------------------------------------------------------------------


class _Hash(Protocol):
    def update(self, data: bytes | bytearray, /) -> None: ...
    def digest(self) -> bytes: ...
    def copy(self) -> _Hash: ...


def _pick_md5() -> Callable[[bytes | bytearray], _Hash]:
    # CPython's built-in MD5 hashes a RADIUS packet about three times faster than OpenSSL 3's
    # (0.5 us against 1.5 us here: OpenSSL's per-call EVP set-up dominates for small inputs).
    # Builds without it (some FIPS builds) fall back to hashlib. Both are checked against
    # hmac/hashlib and against pyrad in the tests.
    try:
        return cast("Callable[[bytes | bytearray], _Hash]", importlib.import_module("_md5").md5)
    except (ImportError, AttributeError):  # pragma: no cover - depends on the CPython build
        return cast("Callable[[bytes | bytearray], _Hash]", hashlib.md5)


_md5: Final = _pick_md5()


class _Keyed:
    """Hash states pre-fed with one shared secret, copied for every packet.

    HMAC-MD5 (RFC 2104) is computed from the pre-fed inner and outer pads, which is what hmac
    does internally, minus re-keying on every packet.
    """

    __slots__ = ("inner", "outer", "secret", "secret_md5")

    def __init__(self, secret: bytes) -> None:
        key = _md5(secret).digest() if len(secret) > 64 else secret
        key = key.ljust(64, b"\0")
        self.inner = _md5(bytes(b ^ 0x36 for b in key))
        self.outer = _md5(bytes(b ^ 0x5C for b in key))
        self.secret = secret
        self.secret_md5 = _md5(secret)

    def hmac_md5(self, *parts: bytes | bytearray) -> bytes:
        inner = self.inner.copy()
        for part in parts:
            inner.update(part)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def md5_secret_then(self, data: bytes) -> bytes:
        """MD5(secret + data), the keystream of User-Password hiding."""
        h = self.secret_md5.copy()
        h.update(data)
        return h.digest()


_KEYED: dict[bytes, _Keyed] = {}


def _keyed(secret: bytes) -> _Keyed:
    keyed = _KEYED.get(secret)
    if keyed is None:
        if not isinstance(secret, bytes):
            raise TypeError("secret must be bytes")
        if len(_KEYED) >= KEYED_SECRETS_MAX:
            _KEYED.clear()
        keyed = _KEYED[secret] = _Keyed(secret)
    return keyed


def _md5_of(*parts: bytes | bytearray) -> bytes:
    h = _md5(parts[0])
    for part in parts[1:]:
        h.update(part)
    return h.digest()


# --- dictionary tables --------------------------------------------------------------------------

AttrKey = int | tuple[int, int]
Value = str | int | bytes


def _decode_string(v: bytes) -> str:
    return v.decode("utf-8", "replace")


def _decode_uint(v: bytes) -> int:
    return int.from_bytes(v, "big")


def _decode_signed(v: bytes) -> int:
    return int.from_bytes(v, "big", signed=True)


def _decode_ipv6prefix(v: bytes) -> str:
    network = ipaddress.IPv6Network((v[2:].ljust(16, b"\0"), v[1]), strict=False)
    return str(network)


def _decode_ipv6addr(v: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, v)


def _decode_ifid(v: bytes) -> str:
    # printed like FreeRADIUS and pyrad: "211:22ff:fe33:4455"
    return ":".join(f"{group:x}" for group in struct.unpack("!4H", v))


def _decode_octets(v: bytes) -> bytes:
    return v


_DECODERS: Final[dict[str, Callable[[bytes], Value]]] = {
    "string": _decode_string,
    "integer": _decode_uint,
    "date": _decode_uint,
    "short": _decode_uint,
    "byte": _decode_uint,
    "integer64": _decode_uint,
    "signed": _decode_signed,
    "ipaddr": socket.inet_ntoa,
    "ipv6addr": _decode_ipv6addr,
    "ipv6prefix": _decode_ipv6prefix,
    "ifid": _decode_ifid,
    "octets": _decode_octets,
}

# (min, max) value length of the types whose decoder needs an exact size.
_TYPE_BOUNDS: Final[dict[str, tuple[int, int]]] = {
    "integer": (4, 4),
    "date": (4, 4),
    "signed": (4, 4),
    "short": (2, 2),
    "byte": (1, 1),
    "integer64": (8, 8),
    "ipaddr": (4, 4),
    "ipv6addr": (16, 16),
    "ifid": (8, 8),
    "ipv6prefix": (2, 18),  # RFC 3162 section 2.3; the prefix length is checked too
}


def _cannot(attr: AttributeDef, value: object) -> TypeError:
    return TypeError(f"{attr.name} ({attr.datatype}): cannot encode {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _encode_string(attr: AttributeDef, value: object) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    if _is_int(value):
        return str(value).encode()  # ("h323-credit-time", 60)
    raise _cannot(attr, value)


def _encode_named_string(attr: AttributeDef, value: object) -> bytes:
    """A Cisco VoIP VSA: the bare value or the "name=value" form, sent as "name=value"."""
    if isinstance(value, str):
        text = value
    elif _is_int(value):
        text = str(value)
    else:
        raise _cannot(attr, value)
    if not text.startswith(attr.name_prefix):
        text = attr.name_prefix + text
    return text.encode()


def _integer_encoder(packer: Callable[[int], bytes]) -> Callable[[AttributeDef, object], bytes]:
    def encode(attr: AttributeDef, value: object) -> bytes:
        if isinstance(value, str):
            number = attr.named_values.get(value)
            if number is None:
                raise ValueError(f"{attr.name}: no value named {value!r}")
            value = number
        if not isinstance(value, int) or isinstance(value, bool):
            raise _cannot(attr, value)
        try:
            return packer(value)
        except (struct.error, ValueError, OverflowError) as exc:
            raise ValueError(f"{attr.name}: {value} out of range") from exc

    return encode


def _encode_octets(attr: AttributeDef, value: object) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise _cannot(attr, value)


def _encode_ipaddr(attr: AttributeDef, value: object) -> bytes:
    if isinstance(value, str | ipaddress.IPv4Address):
        return ipaddress.IPv4Address(value).packed
    raise _cannot(attr, value)


def _encode_ipv6addr(attr: AttributeDef, value: object) -> bytes:
    if isinstance(value, str | ipaddress.IPv6Address):
        return ipaddress.IPv6Address(value).packed
    raise _cannot(attr, value)


def _encode_ipv6prefix(attr: AttributeDef, value: object) -> bytes:
    if isinstance(value, str | ipaddress.IPv6Network):
        network = ipaddress.IPv6Network(value, strict=False)
        prefix_octets = (network.prefixlen + 7) // 8
        return bytes((0, network.prefixlen)) + network.network_address.packed[:prefix_octets]
    raise _cannot(attr, value)


def _encode_ifid(attr: AttributeDef, value: object) -> bytes:
    if isinstance(value, str):
        groups = value.split(":")
        if len(groups) == 4:
            try:
                return struct.pack("!4H", *(int(group, 16) for group in groups))
            except struct.error as exc:
                raise ValueError(f"{attr.name}: {value!r}") from exc
    raise _cannot(attr, value)


_ENCODERS: Final[dict[str, Callable[[AttributeDef, object], bytes]]] = {
    "string": _encode_string,
    "integer": _integer_encoder(_U32.pack),
    "date": _integer_encoder(_U32.pack),
    "short": _integer_encoder(_U16.pack),
    "byte": _integer_encoder(struct.Struct("!B").pack),
    "integer64": _integer_encoder(_U64.pack),
    "signed": _integer_encoder(_I32.pack),
    "ipaddr": _encode_ipaddr,
    "ipv6addr": _encode_ipv6addr,
    "ipv6prefix": _encode_ipv6prefix,
    "ifid": _encode_ifid,
    "octets": _encode_octets,
}


class AttributeDef:
    """One dictionary attribute, as the codec uses it."""

    __slots__ = (
        "code",
        "datatype",
        "decode",
        "encode",
        "key",
        "name",
        "name_prefix",
        "named_values",
        "vendor",
    )

    def __init__(
        self, name: str, code: int, vendor: int, datatype: str, named_values: dict[str, int]
    ) -> None:
        self.name = name
        self.code = code
        self.vendor = vendor
        self.datatype = datatype
        self.key: AttrKey = (vendor, code) if vendor else code
        self.named_values = named_values
        self.decode = _DECODERS[datatype]
        self.encode = _ENCODERS[datatype]
        # Cisco's VoIP VSAs carry their own name: "h323-credit-time=60".
        self.name_prefix = ""
        if vendor == CISCO and not name.startswith("Cisco-") and datatype == "string":
            self.name_prefix = f"{name}="
            self.encode = _encode_named_string


def _load(path: Path) -> tuple[dict[str, AttributeDef], frozenset[int]]:
    parsed = Dictionary(str(path))
    by_name: dict[str, AttributeDef] = {}
    for name, attr in parsed.attributes.items():
        assert attr.type in _DECODERS, f"{name}: the codec does not handle type {attr.type}"
        assert not attr.is_sub_attribute and not attr.has_tag, name
        vendor = parsed.vendors.GetForward(attr.vendor) if attr.vendor else 0
        named: dict[str, int] = {
            value_name: int.from_bytes(encoded, "big")
            for value_name, encoded in attr.values.forward.items()
        }
        by_name[name] = AttributeDef(name, attr.code, vendor, attr.type, named)
    # pyrad skips the attributes of vendors whose format is not type/length (format=1,1), so a
    # vendor with attributes here is one whose VSAs decode can check and split.
    vendors = frozenset(a.vendor for a in by_name.values() if a.vendor)
    return by_name, vendors


_LOADED: Final = _load(DICTIONARY_PATH)
ATTRIBUTES: Final = _LOADED[0]
# Vendors whose VSAs are type/length/value lists (format=1,1): their inner lengths are checked.
_VENDORS: Final = _LOADED[1]
BY_KEY: Final[dict[AttrKey, AttributeDef]] = {a.key: a for a in ATTRIBUTES.values()}


def _value_bounds() -> dict[AttrKey, tuple[int, int]]:
    bounds = {
        a.key: _TYPE_BOUNDS[a.datatype] for a in ATTRIBUTES.values() if a.datatype in _TYPE_BOUNDS
    }
    bounds[USER_PASSWORD] = (16, MAX_PASSWORD_LENGTH)
    bounds[CHAP_PASSWORD] = (17, 17)  # RFC 2865 section 5.3: CHAP Ident + 16-octet response
    bounds[MESSAGE_AUTHENTICATOR] = (16, 16)
    bounds[VENDOR_SPECIFIC] = (5, MAX_VALUE_LENGTH)  # RFC 2865 5.26: vendor id and a value
    return bounds


_BOUNDS: Final = _value_bounds()
# The hot loop of decode indexes a tuple by attribute type rather than calling dict.get.
_STANDARD_BOUNDS: Final = tuple(_BOUNDS.get(kind) for kind in range(256))
_IPV6_PREFIXES: Final = frozenset(a.key for a in ATTRIBUTES.values() if a.datatype == "ipv6prefix")
# never shown in a log line
_SECRET_NAMES: Final = frozenset(("User-Password", "CHAP-Password", "Message-Authenticator"))
_VSA_HEADER: Final = struct.Struct("!BBIBB")
_ATTR_HEADER: Final = struct.Struct("!BB")
for _status in AcctStatusType:
    assert (
        ATTRIBUTES["Acct-Status-Type"].named_values[_status.name.title().replace("_", "-")]
        == _status
    ), _status
assert ATTRIBUTES["User-Password"].key == USER_PASSWORD


def value_of(attribute: str, value_name: str) -> int:
    """The number of a named VALUE: value_of("Error-Cause", "Session-Context-Not-Found") == 503."""
    return ATTRIBUTES[attribute].named_values[value_name]


def value_name(attribute: str, value: int) -> str | None:
    """The dictionary name of an integer value, or None."""
    for name, number in ATTRIBUTES[attribute].named_values.items():
        if number == value:
            return name
    return None


# --- packets ------------------------------------------------------------------------------------


def _sub_attributes(value: bytes) -> Iterator[tuple[AttrKey, bytes]]:
    """((vendor, type), value) of a Vendor-Specific value that decode accepted."""
    vendor = _U32.unpack_from(value)[0]
    if vendor not in _VENDORS:
        return
    pos = 4
    while pos < len(value):
        sub_end = pos + value[pos + 1]
        yield (vendor, value[pos]), value[pos + 2 : sub_end]
        pos = sub_end


class Packet:
    """A decoded RADIUS packet.

    `attributes` holds (type, value) in wire order; a Vendor-Specific attribute stays one
    (26, raw value) entry, and its sub-attributes are reachable by name through get().
    """

    __slots__ = ("_first", "_ma_offset", "attributes", "authenticator", "code", "identifier", "raw")

    def __init__(
        self,
        code: Code,
        identifier: int,
        authenticator: bytes,
        attributes: list[tuple[int, bytes]],
        raw: bytes,
        first: dict[AttrKey, bytes],
        ma_offset: int,
    ) -> None:
        self.code = code
        self.identifier = identifier
        self.authenticator = authenticator
        self.attributes = attributes
        self.raw = raw
        # first value of each attribute (and VSA) present
        self._first = first
        # offset in raw of the Message-Authenticator value, -1 without one
        self._ma_offset = ma_offset

    def __repr__(self) -> str:
        attrs = ", ".join(
            f"{name}={'<hidden>' if name in _SECRET_NAMES else repr(value)}"
            for name, value in self.items()
        )
        return f"<Packet {self.code.name} id={self.identifier} {attrs}>"

    def get(self, name: str) -> Value | None:
        """The first value of an attribute, decoded per dictionary type, or None.

        Raises KeyError for a name the dictionary does not define.
        """
        attr = ATTRIBUTES[name]
        value = self._first.get(attr.key)
        if value is None:
            return None
        return attr.decode(value)

    def get_all(self, name: str) -> list[Value]:
        attr = ATTRIBUTES[name]
        return [attr.decode(v) for v in self.raw_values(attr.key)]

    def has(self, name: str) -> bool:
        return ATTRIBUTES[name].key in self._first

    def raw_values(self, key: AttrKey) -> list[bytes]:
        """The undecoded values of an attribute by code or (vendor, code), in wire order."""
        if key not in self._first:
            return []
        if isinstance(key, int):
            return [value for kind, value in self.attributes if kind == key]
        return [
            sub_value
            for kind, value in self.attributes
            if kind == VENDOR_SPECIFIC
            for sub_key, sub_value in _sub_attributes(value)
            if sub_key == key
        ]

    def cisco(self, name: str) -> str | None:
        """The value of a Cisco "name=value" VSA without its "name=" part.

        Searches the VSA of that name, then the Cisco-AVPair "name=value" entries.
        """
        prefix = name + "="
        attr = ATTRIBUTES.get(name)
        if attr is not None and attr.vendor == CISCO and attr.key != CISCO_AVPAIR:
            raw = self._first.get(attr.key)
            if raw is not None:
                text = _decode_string(raw)
                # some gateways send the bare value in the named VSA
                return text[len(prefix) :] if text.startswith(prefix) else text
        for raw in self.raw_values(CISCO_AVPAIR):
            text = _decode_string(raw)
            if text.startswith(prefix):
                return text[len(prefix) :]
        return None

    def items(self) -> Iterator[tuple[str, Value]]:
        """(name, decoded value) of every attribute the dictionary defines, in wire order."""
        for kind, value in self.attributes:
            if kind == VENDOR_SPECIFIC:
                for key, sub_value in _sub_attributes(value):
                    attr = BY_KEY.get(key)
                    if attr is not None:
                        yield attr.name, attr.decode(sub_value)
            else:
                attr = BY_KEY.get(kind)
                if attr is not None:
                    yield attr.name, attr.decode(value)


def decode(data: bytes) -> Packet:
    """Decode one datagram; raises RadiusError("malformed") for anything RFC 2865 forbids."""
    received = len(data)
    if received < HEADER_LENGTH or received > MAX_PACKET_LENGTH:
        raise RadiusError("malformed", f"datagram of {received} octets")
    code_number, identifier, length = _HEADER.unpack_from(data)
    if length < HEADER_LENGTH or length > received:
        raise RadiusError("malformed", f"length field {length}, datagram of {received} octets")
    if length < received:
        # RFC 2865 section 3: octets beyond the Length field are padding
        data = data[:length]
    code = _CODES.get(code_number)
    if code is None:
        raise RadiusError("malformed", f"unknown code {code_number}")

    attributes: list[tuple[int, bytes]] = []
    first: dict[AttrKey, bytes] = {}
    ma_offset = -1
    all_bounds = _STANDARD_BOUNDS
    pos = HEADER_LENGTH
    while pos + 1 < length:
        kind = data[pos]
        end = pos + data[pos + 1]
        if end < pos + 2 or end > length:
            raise RadiusError("malformed", f"attribute {kind} of length {end - pos}")
        value = data[pos + 2 : end]
        attributes.append((kind, value))
        bounds = all_bounds[kind]
        if bounds is not None:
            if not bounds[0] <= end - pos - 2 <= bounds[1]:
                raise RadiusError("malformed", f"attribute {kind} of {end - pos - 2} octets")
            if kind == VENDOR_SPECIFIC:
                _index_vsa(value, first)
                pos = end
                continue
            if kind == MESSAGE_AUTHENTICATOR:
                if ma_offset >= 0:
                    raise RadiusError("malformed", "two Message-Authenticators")
                ma_offset = pos + 2
            elif kind in _IPV6_PREFIXES and value[1] > 128:
                raise RadiusError("malformed", f"attribute {kind}: prefix length {value[1]}")
        first.setdefault(kind, value)
        pos = end
    if pos != length:
        raise RadiusError("malformed", "a lone octet after the last attribute")
    return Packet(code, identifier, data[4:20], attributes, data, first, ma_offset)


def _index_vsa(value: bytes, first: dict[AttrKey, bytes]) -> None:
    vendor = _U32.unpack_from(value)[0]
    if vendor not in _VENDORS:
        # Another vendor's format is unknown (not every vendor uses type/length pairs);
        # the attribute stays raw and is never decoded.
        return
    end = len(value)
    pos = 4
    while pos < end:
        if pos + 2 > end:
            raise RadiusError("malformed", f"vendor {vendor}: truncated sub-attribute")
        sub = value[pos]
        sub_end = pos + value[pos + 1]
        if sub_end < pos + 2 or sub_end > end:
            raise RadiusError("malformed", f"vendor {vendor}: sub-attribute {sub} length")
        sub_value = value[pos + 2 : sub_end]
        key = (vendor, sub)
        bounds = _BOUNDS.get(key)
        if bounds is not None:
            if not bounds[0] <= len(sub_value) <= bounds[1]:
                raise RadiusError("malformed", f"attribute {key} of {len(sub_value)} octets")
            if key in _IPV6_PREFIXES and sub_value[1] > 128:
                raise RadiusError("malformed", f"attribute {key}: prefix length {sub_value[1]}")
        first.setdefault(key, sub_value)
        pos = sub_end


# --- verification -------------------------------------------------------------------------------


def _message_authenticator_ok(
    keyed: _Keyed, raw: bytes, ma_offset: int, vector: bytes | None
) -> bool:
    """HMAC-MD5 over the packet with the Message-Authenticator zeroed (RFC 3579 section 3.2).

    vector replaces the Authenticator field (None: keep the packet's own).
    """
    if vector is None:
        mac = keyed.hmac_md5(raw[:ma_offset], _ZERO16, raw[ma_offset + 16 :])
    else:
        mac = keyed.hmac_md5(raw[:4], vector, raw[20:ma_offset], _ZERO16, raw[ma_offset + 16 :])
    return hmac.compare_digest(mac, raw[ma_offset : ma_offset + 16])


def verify_request(packet: Packet, secret: bytes, *, require_message_authenticator: bool) -> None:
    """Authenticate a received request or raise RadiusError.

    Access-Request: the Message-Authenticator if present, else "missing_message_authenticator"
    when it is required. Status-Server always needs one (RFC 5997). Accounting-, Disconnect- and
    CoA-Request: the Request Authenticator, then the Message-Authenticator if present.
    """
    keyed = _keyed(secret)
    code = packet.code
    if code in _RANDOM_AUTHENTICATOR_REQUESTS:
        if packet._ma_offset < 0:
            if require_message_authenticator or code == Code.STATUS_SERVER:
                raise RadiusError("missing_message_authenticator", code.name)
            return
        if not _message_authenticator_ok(keyed, packet.raw, packet._ma_offset, None):
            raise RadiusError("bad_message_authenticator", code.name)
        return
    if code not in _SIGNED_REQUESTS:
        raise RadiusError("malformed", f"{code.name} is not a request")
    raw = packet.raw
    expected = _md5_of(raw[:4], _ZERO16, raw[20:], secret)
    if not hmac.compare_digest(expected, packet.authenticator):
        raise RadiusError("bad_authenticator", code.name)
    if packet._ma_offset >= 0 and not _message_authenticator_ok(
        keyed, raw, packet._ma_offset, _ZERO16
    ):
        raise RadiusError("bad_message_authenticator", code.name)


def verify_reply(
    data: bytes,
    request_authenticator: bytes,
    secret: bytes,
    *,
    require_message_authenticator: bool = True,
) -> Packet:
    """Decode and authenticate a reply to a request we sent (clients: tests, load generator,
    the Disconnect-Request sender).

    Checks the Response Authenticator and the Message-Authenticator if present; replies to an
    Access-Request must carry one unless require_message_authenticator is False (BlastRADIUS).
    The caller matches the Identifier.
    """
    packet = decode(data)
    code = packet.code
    if code in _REQUESTS:
        raise RadiusError("malformed", f"{code.name} is not a reply")
    raw = packet.raw
    expected = _md5_of(raw[:4], request_authenticator, raw[20:], secret)
    if not hmac.compare_digest(expected, packet.authenticator):
        raise RadiusError("bad_authenticator", code.name)
    if packet._ma_offset >= 0:
        vector = _ZERO16 if code == Code.ACCOUNTING_RESPONSE else request_authenticator
        if not _message_authenticator_ok(_keyed(secret), raw, packet._ma_offset, vector):
            raise RadiusError("bad_message_authenticator", code.name)
    elif require_message_authenticator and code in _ACCESS_REPLIES:
        raise RadiusError("missing_message_authenticator", code.name)
    return packet


def _xor16(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(16, "big")


def decrypt_password(packet: Packet, secret: bytes) -> bytes:
    """The User-Password of an Access-Request in clear (RFC 2865 section 5.2), NULs stripped.

    Raises RadiusError("malformed") without a User-Password or with one whose length is not a
    multiple of 16. A wrong secret gives garbage, not an error: compare it with the stored one.
    """
    hidden = packet._first.get(USER_PASSWORD)
    if hidden is None:
        raise RadiusError("malformed", "no User-Password")
    if len(hidden) % 16:
        raise RadiusError("malformed", f"User-Password of {len(hidden)} octets")
    keyed = _keyed(secret)
    if len(hidden) == 16:  # nearly every password: one block
        return _xor16(hidden, keyed.md5_secret_then(packet.authenticator)).rstrip(b"\0")
    out = bytearray()
    last = packet.authenticator
    for start in range(0, len(hidden), 16):
        block = hidden[start : start + 16]
        out += _xor16(block, keyed.md5_secret_then(last))
        last = block
    return bytes(out).rstrip(b"\0")


def chap(packet: Packet) -> tuple[int, bytes, bytes] | None:
    """(CHAP ident, challenge, 16-octet response) of a CHAP Access-Request, else None.

    The challenge is CHAP-Challenge if present, else the Request Authenticator (RFC 2865
    section 2.2).
    """
    chap_password = packet._first.get(CHAP_PASSWORD)
    if chap_password is None:
        return None
    # 17 octets, checked by decode
    challenge = packet._first.get(CHAP_CHALLENGE, packet.authenticator)
    return chap_password[0], challenge, chap_password[1:]


def chap_matches(packet: Packet, password: bytes) -> bool:
    """Whether the CHAP-Password of the packet is MD5(ident + password + challenge)."""
    found = chap(packet)
    if found is None:
        return False
    ident, challenge, response = found
    return hmac.compare_digest(_md5_of(bytes((ident,)), password, challenge), response)


# --- encoding -----------------------------------------------------------------------------------


def _utf8_chunks(data: bytes, size: int) -> Iterator[bytes]:
    """Split data into chunks of at most size octets, never inside a UTF-8 sequence."""
    while len(data) > size:
        cut = size
        while cut > size - 3 and data[cut] & 0xC0 == 0x80:
            cut -= 1
        yield data[:cut]
        data = data[cut:]
    yield data


_ENCODED: dict[tuple[str, str | int], bytes] = {}


def _encode_attribute(name: str, value: object) -> bytes:
    """One attribute on the wire; a str or int value's encoding is remembered (replies repeat
    the same currency, return code, billing model and credit time over and over)."""
    kind = type(value)
    if kind is not str and kind is not int:
        return _encode_attribute_now(name, value)
    key = (name, cast("str | int", value))
    encoded = _ENCODED.get(key)
    if encoded is None:
        encoded = _encode_attribute_now(name, value)
        if len(_ENCODED) >= ENCODED_CACHE_MAX:
            _ENCODED.clear()
        _ENCODED[key] = encoded
    return encoded


def _encode_attribute_now(name: str, value: object) -> bytes:
    attr = ATTRIBUTES[name]
    raw = attr.encode(attr, value)
    size = len(raw)
    if attr.vendor:
        if size > MAX_VSA_VALUE_LENGTH:
            raise ValueError(f"{name}: {size} octets, at most {MAX_VSA_VALUE_LENGTH} fit")
        return _VSA_HEADER.pack(VENDOR_SPECIFIC, size + 8, attr.vendor, attr.code, size + 2) + raw
    if size > MAX_VALUE_LENGTH:
        if attr.code != REPLY_MESSAGE:
            raise ValueError(f"{name}: {size} octets, at most {MAX_VALUE_LENGTH} fit")
        # RFC 2865 section 5.18: several Reply-Messages are displayed concatenated
        return b"".join(
            _ATTR_HEADER.pack(REPLY_MESSAGE, len(chunk) + 2) + chunk
            for chunk in _utf8_chunks(raw, MAX_VALUE_LENGTH)
        )
    return _ATTR_HEADER.pack(attr.code, size + 2) + raw


def encode_attributes(attributes: Iterable[tuple[str, object]]) -> bytes:
    """Attributes by name, values per dictionary type (not User-Password: see encode_request)."""
    return b"".join(_encode_attribute(name, value) for name, value in attributes)


def _code(number: int) -> Code:
    code = _CODES.get(number)
    if code is None:
        raise ValueError(f"unknown RADIUS code {number}")
    return code


def _check_length(length: int) -> None:
    if length > MAX_PACKET_LENGTH:
        raise ValueError(f"packet of {length} octets, at most {MAX_PACKET_LENGTH}")


def encode_reply(
    code: Code | int,
    request: Packet,
    attributes: Sequence[tuple[str, object]],
    secret: bytes,
    *,
    message_authenticator: bool | None = None,
) -> bytes:
    """Encode the reply to a decoded request.

    Message-Authenticator comes first in Access-Accept, -Reject and -Challenge (and in any
    other reply when message_authenticator is True). Proxy-State attributes of the request are
    copied to the end, unchanged and in order (RFC 2865 section 5.33). Cisco VSAs take their
    bare value (60 or "60") or the "name=value" form; a Reply-Message longer than 253 octets is
    split into several.
    """
    code = _code(code)
    assert code not in _REQUESTS, code
    if message_authenticator is None:
        message_authenticator = code in _ACCESS_REPLIES
    body = bytearray(_MA_PLACEHOLDER) if message_authenticator else bytearray()
    for name, value in attributes:
        body += _encode_attribute(name, value)
    if PROXY_STATE in request._first:
        for proxy_state in request.raw_values(PROXY_STATE):
            body += _ATTR_HEADER.pack(PROXY_STATE, len(proxy_state) + 2) + proxy_state
    length = HEADER_LENGTH + len(body)
    _check_length(length)
    header = _HEADER.pack(code, request.identifier, length)
    keyed = _keyed(secret)
    if message_authenticator:
        # FreeRADIUS signs an Accounting-Response with a zero vector, every other reply with
        # the Request Authenticator (RFC 3579 section 3.2, RFC 5176 section 3.3).
        vector = _ZERO16 if code == Code.ACCOUNTING_RESPONSE else request.authenticator
        body[2:18] = keyed.hmac_md5(header, vector, body)
    authenticator = _md5_of(header, request.authenticator, body, secret)
    return b"".join((header, authenticator, body))


def _hide_password(password: bytes, authenticator: bytes, keyed: _Keyed) -> bytes:
    """RFC 2865 section 5.2."""
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"password of {len(password)} octets, at most {MAX_PASSWORD_LENGTH}")
    padded = password.ljust(max(16, (len(password) + 15) // 16 * 16), b"\0")
    out = bytearray()
    last = authenticator
    for start in range(0, len(padded), 16):
        last = _xor16(padded[start : start + 16], keyed.md5_secret_then(last))
        out += last
    return bytes(out)


def encode_request(
    code: Code | int,
    identifier: int,
    attributes: Sequence[tuple[str, object]],
    secret: bytes,
    *,
    authenticator: bytes | None = None,
    message_authenticator: bool = True,
) -> bytes:
    """Encode a request, as a client (tests, load generator, Disconnect-Request sender) does.

    Access-Request and Status-Server get a random Request Authenticator (or the one given) and
    User-Password is hidden with it; Accounting-, Disconnect- and CoA-Request get the computed
    one. The Message-Authenticator, when asked for, is the first attribute. The Request
    Authenticator to pass to verify_reply is data[4:20].
    """
    code = _code(code)
    if code not in _REQUESTS:
        raise ValueError(f"{code.name} is not a request")
    if not 0 <= identifier <= 255:
        raise ValueError(f"identifier {identifier}")
    random_authenticator = code in _RANDOM_AUTHENTICATOR_REQUESTS
    if random_authenticator:
        request_authenticator = os.urandom(16) if authenticator is None else authenticator
        if len(request_authenticator) != 16:
            raise ValueError("the authenticator has 16 octets")
    elif authenticator is not None:
        raise ValueError(f"the Request Authenticator of {code.name} is computed")
    else:
        request_authenticator = _ZERO16
    keyed = _keyed(secret)
    body = bytearray(_MA_PLACEHOLDER) if message_authenticator else bytearray()
    for name, value in attributes:
        if name != "User-Password":
            body += _encode_attribute(name, value)
            continue
        if not random_authenticator:
            raise ValueError(f"User-Password in {code.name}")
        clear = value.encode() if isinstance(value, str) else value
        if not isinstance(clear, bytes):
            raise TypeError("User-Password is str or bytes")
        hidden = _hide_password(clear, request_authenticator, keyed)
        body += _ATTR_HEADER.pack(USER_PASSWORD, len(hidden) + 2) + hidden
    length = HEADER_LENGTH + len(body)
    _check_length(length)
    header = _HEADER.pack(code, identifier, length)
    if message_authenticator:
        body[2:18] = keyed.hmac_md5(header, request_authenticator, body)
    if not random_authenticator:
        request_authenticator = _md5_of(header, _ZERO16, body, secret)
    return b"".join((header, request_authenticator, body))
