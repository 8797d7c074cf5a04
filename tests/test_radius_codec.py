"""The RADIUS codec against the RFCs, pyrad (both directions), hypothesis and tshark."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrad.dictionary import Dictionary
from pyrad.packet import AcctPacket, AuthPacket, CoAPacket

from ccserver.radius import codec
from ccserver.radius.codec import AcctStatusType, Code, Packet, RadiusError

SECRET = b"gw-secret-1"
OTHER_SECRET = b"gw-secret-2"
DICT = Dictionary(str(codec.DICTIONARY_PATH))

CALL_AUTH = [
    ("User-Name", "1000123456"),
    ("User-Password", "pin-4711"),
    ("Called-Station-Id", "0049301234567"),
    ("Calling-Station-Id", "0049891234567"),
    ("NAS-IP-Address", "192.0.2.10"),
    ("Acct-Session-Id", "5F3A-22C1-0001"),
    ("h323-conf-id", "3B2A1C0D 11E8A0F1 8000AABB CCDDEEFF"),
]
GRANT = [
    ("Session-Timeout", 1800),
    ("h323-credit-time", 1800),
    ("h323-credit-amount", "12.50"),
    ("h323-currency", "EUR"),
    ("h323-billing-model", 1),
    ("h323-return-code", "h323-return-code=0"),  # the "name=value" form is accepted as well
]


def access_request(attributes: list[tuple[str, object]] | None = None, **kw: object) -> bytes:
    return codec.encode_request(
        Code.ACCESS_REQUEST,
        7,
        CALL_AUTH if attributes is None else attributes,
        SECRET,
        **kw,  # type: ignore[arg-type]
    )


def accounting_request(**kw: object) -> bytes:
    attributes: list[tuple[str, object]] = [
        ("Acct-Status-Type", "Stop"),
        ("User-Name", "1000123456"),
        ("Acct-Session-Id", "5F3A-22C1-0001"),
        ("Acct-Session-Time", 61),
        ("Event-Timestamp", 1_700_000_000),
        ("h323-disconnect-cause", "10"),
    ]
    return codec.encode_request(Code.ACCOUNTING_REQUEST, 9, attributes, SECRET, **kw)  # type: ignore[arg-type]


def resign_accounting(data: bytes | bytearray, secret: bytes = SECRET) -> bytes:
    """Recompute the Request Authenticator after a test changed the packet."""
    data = bytearray(data)
    data[4:20] = hashlib.md5(bytes(data[:4]) + bytes(16) + bytes(data[20:]) + secret).digest()
    return bytes(data)


def reason(data: bytes) -> str:
    with pytest.raises(RadiusError) as caught:
        codec.decode(data)
    return caught.value.reason


def with_length_field(data: bytes | bytearray) -> bytes:
    data = bytearray(data)
    data[2:4] = len(data).to_bytes(2, "big")
    return bytes(data)


def header_only(code: int = 4) -> bytes:
    return bytes((code, 1, 0, 20)) + bytes(16)


# --- the dictionary -----------------------------------------------------------------------------


def test_dictionary_loads_with_pyrad_and_defines_what_gateways_use() -> None:
    assert not DICT.skipped_attributes
    expected = {
        "User-Name": (1, "string"),
        "User-Password": (2, "string"),
        "CHAP-Password": (3, "octets"),
        "NAS-IP-Address": (4, "ipaddr"),
        "NAS-Port": (5, "integer"),
        "Service-Type": (6, "integer"),
        "Framed-IP-Address": (8, "ipaddr"),
        "Reply-Message": (18, "string"),
        "State": (24, "octets"),
        "Class": (25, "octets"),
        "Session-Timeout": (27, "integer"),
        "Idle-Timeout": (28, "integer"),
        "Called-Station-Id": (30, "string"),
        "Calling-Station-Id": (31, "string"),
        "NAS-Identifier": (32, "string"),
        "Acct-Status-Type": (40, "integer"),
        "Acct-Delay-Time": (41, "integer"),
        "Acct-Input-Octets": (42, "integer"),
        "Acct-Output-Octets": (43, "integer"),
        "Acct-Session-Id": (44, "string"),
        "Acct-Authentic": (45, "integer"),
        "Acct-Session-Time": (46, "integer"),
        "Acct-Terminate-Cause": (49, "integer"),
        "Event-Timestamp": (55, "date"),
        "CHAP-Challenge": (60, "octets"),
        "NAS-Port-Type": (61, "integer"),
        "Message-Authenticator": (80, "octets"),
        "NAS-IPv6-Address": (95, "ipv6addr"),
        "Framed-IPv6-Prefix": (97, "ipv6prefix"),
        "Error-Cause": (101, "integer"),
    }
    for name, (code, datatype) in expected.items():
        assert (DICT[name].code, DICT[name].type, DICT[name].vendor) == (code, datatype, ""), name
    assert DICT["User-Password"].encrypt == 1
    assert codec.value_of("Acct-Status-Type", "Start") == AcctStatusType.START
    assert AcctStatusType.START.value == 1
    assert codec.value_of("Acct-Status-Type", "Stop") == 2
    assert codec.value_of("Acct-Status-Type", "Interim-Update") == 3
    assert codec.value_of("Acct-Status-Type", "Accounting-On") == 7
    assert codec.value_of("Acct-Status-Type", "Accounting-Off") == 8
    assert codec.value_of("Error-Cause", "Session-Context-Not-Found") == 503
    assert codec.value_name("Error-Cause", 404) == "Invalid-Request"
    assert codec.value_name("Error-Cause", 999) is None
    cisco = {
        "Cisco-AVPair": 1,
        "h323-remote-address": 23,
        "h323-conf-id": 24,
        "h323-setup-time": 25,
        "h323-call-origin": 26,
        "h323-call-type": 27,
        "h323-connect-time": 28,
        "h323-disconnect-time": 29,
        "h323-disconnect-cause": 30,
        "h323-voice-quality": 31,
        "h323-gw-id": 33,
        "h323-incoming-conf-id": 35,
        "h323-credit-amount": 101,
        "h323-credit-time": 102,
        "h323-return-code": 103,
        "h323-prompt-id": 104,
        "h323-time-and-day": 105,
        "h323-redirect-number": 106,
        "h323-preferred-lang": 107,
        "h323-redirect-ip-address": 108,
        "h323-billing-model": 109,
        "h323-currency": 110,
    }
    assert DICT.vendors.GetForward("Cisco") == 9
    for name, code in cisco.items():
        assert (DICT[name].code, DICT[name].type, DICT[name].vendor) == (code, "string", "Cisco")
        assert codec.ATTRIBUTES[name].key == (9, code)


# --- round trips --------------------------------------------------------------------------------


def test_access_request_round_trip() -> None:
    data = access_request()
    packet = codec.decode(data)
    codec.verify_request(packet, SECRET, require_message_authenticator=True)
    assert packet.code is Code.ACCESS_REQUEST
    assert packet.identifier == 7
    assert packet.authenticator == data[4:20]
    assert packet.raw == data
    assert packet.attributes[0][0] == 80  # Message-Authenticator first
    assert [kind for kind, _ in packet.attributes] == [80, 1, 2, 30, 31, 4, 44, 26]
    assert packet.get("User-Name") == "1000123456"
    assert packet.get("Called-Station-Id") == "0049301234567"
    assert packet.get("NAS-IP-Address") == "192.0.2.10"
    assert packet.get("h323-conf-id") == "h323-conf-id=3B2A1C0D 11E8A0F1 8000AABB CCDDEEFF"
    assert packet.cisco("h323-conf-id") == "3B2A1C0D 11E8A0F1 8000AABB CCDDEEFF"
    assert packet.get("Framed-IP-Address") is None
    assert packet.cisco("h323-credit-time") is None
    assert packet.has("Acct-Session-Id") and not packet.has("State")
    assert codec.decrypt_password(packet, SECRET) == b"pin-4711"
    assert codec.decrypt_password(packet, OTHER_SECRET) != b"pin-4711"
    assert codec.chap(packet) is None
    assert "pin-4711" not in repr(packet) and "User-Password=<hidden>" in repr(packet)
    with pytest.raises(KeyError):
        packet.get("No-Such-Attribute")


@pytest.mark.parametrize(
    "password",
    [b"", b"a", b"0123456789abcde", b"0123456789abcdef", b"0123456789abcdefg", b"x" * 128],
)
def test_password_lengths(password: bytes) -> None:
    data = access_request([("User-Name", "u"), ("User-Password", password)])
    packet = codec.decode(data)
    hidden = packet.raw_values(2)[0]
    assert len(hidden) == max(16, (len(password) + 15) // 16 * 16)
    assert codec.decrypt_password(packet, SECRET) == password


def test_unicode_password_and_long_secret() -> None:
    secret = b"s" * 100  # longer than the HMAC block: hashed first (RFC 2104)
    data = codec.encode_request(
        Code.ACCESS_REQUEST, 1, [("User-Name", "ü"), ("User-Password", "pässwörd")], secret
    )
    packet = codec.decode(data)
    codec.verify_request(packet, secret, require_message_authenticator=True)
    assert codec.decrypt_password(packet, secret).decode() == "pässwörd"
    assert packet.get("User-Name") == "ü"


def test_decode_per_type() -> None:
    data = codec.encode_request(
        Code.ACCOUNTING_REQUEST,
        200,
        [
            ("Acct-Status-Type", AcctStatusType.INTERIM_UPDATE),
            ("Event-Timestamp", 1_700_000_000),
            ("NAS-IPv6-Address", "2001:db8::1"),
            ("Framed-IPv6-Prefix", "2001:db8:ab::/48"),
            ("Framed-Interface-Id", "211:22ff:fe33:4455"),
            ("Class", b"\x00\xffraw"),
            ("Service-Type", "Login-User"),
            ("NAS-Port", 0xFFFFFFFF),
            ("Acct-Terminate-Cause", 1),
            ("Cisco-AVPair", "h323-ivr-out=x:y"),
            ("Cisco-AVPair", "call-id=abc@192.0.2.1"),
            ("Reply-Message", "b"),
        ],
        SECRET,
    )
    packet = codec.decode(data)
    codec.verify_request(packet, SECRET, require_message_authenticator=False)
    assert packet.get("Acct-Status-Type") == 3
    assert packet.get("Event-Timestamp") == 1_700_000_000
    assert packet.get("NAS-IPv6-Address") == "2001:db8::1"
    assert packet.get("Framed-IPv6-Prefix") == "2001:db8:ab::/48"
    assert packet.get("Framed-Interface-Id") == "211:22ff:fe33:4455"
    assert packet.get("Class") == b"\x00\xffraw"
    assert packet.get("Service-Type") == 1
    assert packet.get("NAS-Port") == 0xFFFFFFFF
    assert packet.get_all("Cisco-AVPair") == ["h323-ivr-out=x:y", "call-id=abc@192.0.2.1"]
    assert packet.cisco("call-id") == "abc@192.0.2.1"
    assert packet.cisco("h323-ivr-out") == "x:y"
    assert packet.cisco("h323-ivr-in") is None
    assert [name for name, _ in packet.items()][:3] == [
        "Message-Authenticator",
        "Acct-Status-Type",
        "Event-Timestamp",
    ]


def test_invalid_utf8_string_is_replaced_not_raised() -> None:
    data = codec.encode_request(Code.ACCOUNTING_REQUEST, 1, [("User-Name", b"\xff\xfeabc")], SECRET)
    assert codec.decode(data).get("User-Name") == "\ufffd\ufffdabc"


def test_cisco_vsa_with_bare_value_and_several_vsas_in_one_attribute() -> None:
    # one Vendor-Specific holding two Cisco sub-attributes, the first without its "name="
    inner = b"\x18\x05abc" + b"\x66\x04" + b"60"
    vsa = bytes((26, 6 + len(inner))) + (9).to_bytes(4, "big") + inner
    data = resign_accounting(with_length_field(header_only() + vsa))
    packet = codec.decode(data)
    codec.verify_request(packet, SECRET, require_message_authenticator=False)
    assert packet.cisco("h323-conf-id") == "abc"
    assert packet.cisco("h323-credit-time") == "60"
    assert packet.attributes == [(26, vsa[2:])]


def test_unknown_vendor_and_unknown_attribute_stay_raw() -> None:
    other_vendor = bytes((26, 9)) + (311).to_bytes(4, "big") + b"\x01\x07\x00"  # odd format
    unknown = bytes((250, 4)) + b"zz"
    data = resign_accounting(with_length_field(header_only() + other_vendor + unknown))
    packet = codec.decode(data)
    assert packet.attributes == [(26, other_vendor[2:]), (250, b"zz")]
    assert packet.raw_values(250) == [b"zz"]
    assert list(packet.items()) == []


def test_padding_after_the_length_field_is_ignored() -> None:
    data = accounting_request()
    packet = codec.decode(data + b"\x00garbage")
    assert packet.raw == data
    codec.verify_request(packet, SECRET, require_message_authenticator=False)


@pytest.mark.parametrize(
    ("code", "reply_code"),
    [
        (Code.ACCOUNTING_REQUEST, Code.ACCOUNTING_RESPONSE),
        (Code.DISCONNECT_REQUEST, Code.DISCONNECT_ACK),
        (Code.DISCONNECT_REQUEST, Code.DISCONNECT_NAK),
        (Code.COA_REQUEST, Code.COA_ACK),
        (Code.COA_REQUEST, Code.COA_NAK),
    ],
)
@pytest.mark.parametrize("message_authenticator", [True, False])
def test_signed_requests_and_their_replies(
    code: Code, reply_code: Code, message_authenticator: bool
) -> None:
    data = codec.encode_request(
        code,
        3,
        [("User-Name", "1000123456"), ("Acct-Session-Id", "s-1")],
        SECRET,
        message_authenticator=message_authenticator,
    )
    packet = codec.decode(data)
    assert (packet.attributes[0][0] == 80) is message_authenticator
    codec.verify_request(packet, SECRET, require_message_authenticator=True)
    with pytest.raises(RadiusError) as caught:
        codec.verify_request(codec.decode(data), OTHER_SECRET, require_message_authenticator=False)
    assert caught.value.reason == "bad_authenticator"
    attributes: list[tuple[str, object]] = []
    if reply_code in (Code.DISCONNECT_NAK, Code.COA_NAK):
        attributes = [("Error-Cause", "Session-Context-Not-Found")]
    reply = codec.encode_reply(
        reply_code, packet, attributes, SECRET, message_authenticator=message_authenticator
    )
    answer = codec.verify_reply(reply, data[4:20], SECRET)
    assert answer.code is reply_code and answer.identifier == 3
    if attributes:
        assert answer.get("Error-Cause") == 503
    with pytest.raises(RadiusError) as caught:
        codec.verify_reply(reply, data[4:20], OTHER_SECRET)
    assert caught.value.reason == "bad_authenticator"


@pytest.mark.parametrize("code", [Code.ACCESS_ACCEPT, Code.ACCESS_REJECT, Code.ACCESS_CHALLENGE])
def test_access_replies_carry_message_authenticator_first(code: Code) -> None:
    data = access_request()
    request = codec.decode(data)
    reply = codec.encode_reply(
        code, request, [("Reply-Message", "insufficient_funds"), *GRANT], SECRET
    )
    answer = codec.verify_reply(reply, data[4:20], SECRET)
    assert answer.attributes[0][0] == 80 and len(answer.attributes[0][1]) == 16
    assert reply[20:22] == b"\x50\x12"
    assert answer.code is code and answer.identifier == request.identifier
    assert answer.get("Session-Timeout") == 1800
    assert answer.get("h323-credit-time") == "h323-credit-time=1800"
    assert answer.cisco("h323-credit-amount") == "12.50"
    assert answer.get("h323-billing-model") == "h323-billing-model=1"
    assert answer.get("h323-return-code") == "h323-return-code=0"


def test_proxy_state_is_copied_to_the_reply() -> None:
    data = codec.encode_request(
        Code.ACCOUNTING_REQUEST,
        1,
        [("User-Name", "a"), ("Proxy-State", b"one"), ("Proxy-State", b"two")],
        SECRET,
    )
    reply = codec.encode_reply(Code.ACCOUNTING_RESPONSE, codec.decode(data), [], SECRET)
    assert codec.verify_reply(reply, data[4:20], SECRET).get_all("Proxy-State") == [b"one", b"two"]


def test_status_server_needs_message_authenticator() -> None:
    data = codec.encode_request(Code.STATUS_SERVER, 1, [("NAS-Identifier", "gw1")], SECRET)
    codec.verify_request(codec.decode(data), SECRET, require_message_authenticator=False)
    bare = codec.encode_request(
        Code.STATUS_SERVER, 1, [("NAS-Identifier", "gw1")], SECRET, message_authenticator=False
    )
    with pytest.raises(RadiusError) as caught:
        codec.verify_request(codec.decode(bare), SECRET, require_message_authenticator=False)
    assert caught.value.reason == "missing_message_authenticator"


def test_reply_message_longer_than_253_octets_is_split() -> None:
    text = "insufficient_funds " + "é" * 300 + " end"  # 623 octets in UTF-8
    request = codec.decode(access_request())
    reply = codec.encode_reply(Code.ACCESS_REJECT, request, [("Reply-Message", text)], SECRET)
    answer = codec.verify_reply(reply, request.authenticator, SECRET)
    chunks = answer.raw_values(18)
    assert len(chunks) == 3
    assert all(len(chunk) <= 253 for chunk in chunks)
    for chunk in chunks:
        chunk.decode("utf-8")  # no character cut in two
    assert "".join(answer.get_all("Reply-Message")) == text  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        codec.encode_reply(Code.ACCESS_ACCEPT, request, [("Filter-Id", "x" * 254)], SECRET)


def test_encoding_errors_are_programming_errors_not_radius_errors() -> None:
    request = codec.decode(access_request())
    cases: list[tuple[list[tuple[str, object]], type[Exception]]] = [
        ([("No-Such-Attribute", 1)], KeyError),
        ([("Session-Timeout", -1)], ValueError),
        ([("Session-Timeout", 2**32)], ValueError),
        ([("Session-Timeout", "forever")], ValueError),
        ([("Session-Timeout", 1.5)], TypeError),
        ([("Session-Timeout", True)], TypeError),
        ([("NAS-IP-Address", "300.1.1.1")], ValueError),
        ([("Class", "not bytes")], TypeError),
        ([("h323-conf-id", "x" * 248)], ValueError),
        ([("Class", b"x" * 250)] * 17, ValueError),  # over 4096 octets
    ]
    for attributes, error in cases:
        with pytest.raises(error):
            codec.encode_reply(Code.ACCESS_ACCEPT, request, attributes, SECRET)
        with pytest.raises(error) as caught:
            codec.encode_request(Code.ACCOUNTING_REQUEST, 1, attributes, SECRET)
        assert not isinstance(caught.value, RadiusError)
    with pytest.raises(ValueError):
        codec.encode_request(Code.ACCOUNTING_REQUEST, 1, [("User-Password", "x")], SECRET)
    with pytest.raises(ValueError):
        codec.encode_request(Code.ACCOUNTING_REQUEST, 1, [], SECRET, authenticator=bytes(16))
    with pytest.raises(ValueError):
        codec.encode_request(Code.ACCESS_ACCEPT, 1, [], SECRET)
    with pytest.raises(ValueError):
        codec.encode_request(Code.ACCESS_REQUEST, 256, [], SECRET)
    with pytest.raises(ValueError):
        codec.encode_request(Code.ACCESS_REQUEST, 1, [("User-Password", "x" * 129)], SECRET)


# --- authentication failures --------------------------------------------------------------------


def verify_reason(data: bytes, secret: bytes = SECRET, *, required: bool = True) -> str | None:
    try:
        codec.verify_request(codec.decode(data), secret, require_message_authenticator=required)
    except RadiusError as error:
        return error.reason
    return None


def test_access_request_message_authenticator() -> None:
    data = access_request()
    assert verify_reason(data) is None
    assert verify_reason(data, OTHER_SECRET) == "bad_message_authenticator"
    tampered = bytearray(data)
    tampered[-1] ^= 0x01  # last octet of the h323-conf-id
    assert verify_reason(bytes(tampered)) == "bad_message_authenticator"
    tampered = bytearray(data)
    tampered[4] ^= 0x01  # the Request Authenticator is covered too
    assert verify_reason(bytes(tampered)) == "bad_message_authenticator"
    bare = access_request(message_authenticator=False)
    assert verify_reason(bare) == "missing_message_authenticator"
    assert verify_reason(bare, required=False) is None
    assert verify_reason(bare, OTHER_SECRET, required=False) is None  # nothing to check with


def test_accounting_request_authenticators() -> None:
    data = accounting_request()
    assert verify_reason(data) is None
    assert verify_reason(data, OTHER_SECRET) == "bad_authenticator"
    tampered = bytearray(data)
    tampered[-1] ^= 0x01
    assert verify_reason(bytes(tampered)) == "bad_authenticator"
    # a Request Authenticator made with the right secret over a wrong Message-Authenticator
    assert bytes(tampered[20:22]) == b"\x50\x12"
    tampered = bytearray(data)
    tampered[22] ^= 0x01
    assert verify_reason(resign_accounting(tampered)) == "bad_message_authenticator"
    assert verify_reason(accounting_request(message_authenticator=False)) is None


def test_a_reply_is_not_a_request() -> None:
    request = codec.decode(accounting_request())
    reply = codec.encode_reply(Code.ACCOUNTING_RESPONSE, request, [], SECRET)
    assert verify_reason(reply) == "malformed"
    with pytest.raises(RadiusError) as caught:
        codec.verify_reply(accounting_request(), bytes(16), SECRET)
    assert caught.value.reason == "malformed"


def test_verify_reply_failures() -> None:
    data = access_request()
    request = codec.decode(data)
    reply = bytearray(codec.encode_reply(Code.ACCESS_ACCEPT, request, GRANT, SECRET))
    with pytest.raises(RadiusError) as caught:
        codec.verify_reply(bytes(reply), bytes(16), SECRET)  # not our request
    assert caught.value.reason == "bad_authenticator"
    # a valid Response Authenticator over a wrong Message-Authenticator
    reply[25] ^= 0x01
    reply[4:20] = hashlib.md5(bytes(reply[:4]) + data[4:20] + bytes(reply[20:]) + SECRET).digest()
    with pytest.raises(RadiusError) as caught:
        codec.verify_reply(bytes(reply), data[4:20], SECRET)
    assert caught.value.reason == "bad_message_authenticator"
    # BlastRADIUS: an Access-Accept without Message-Authenticator is refused by default
    unsigned = codec.encode_reply(
        Code.ACCESS_ACCEPT, request, GRANT, SECRET, message_authenticator=False
    )
    with pytest.raises(RadiusError) as caught:
        codec.verify_reply(unsigned, data[4:20], SECRET)
    assert caught.value.reason == "missing_message_authenticator"
    codec.verify_reply(unsigned, data[4:20], SECRET, require_message_authenticator=False)


# --- malformed packets --------------------------------------------------------------------------


def test_malformed_packets_are_rejected() -> None:
    good = accounting_request()
    ma = bytes((80, 18)) + bytes(16)
    cisco_sub = b"\x18\x05abc"

    def vsa(inner: bytes, vendor: int = 9, length: int | None = None) -> bytes:
        size = 6 + len(inner) if length is None else length
        return bytes((26, size)) + vendor.to_bytes(4, "big") + inner

    cases = {
        "empty": b"",
        "19 octets": good[:19],
        "4097 octets": with_length_field(
            header_only() + (b"\xfa\xff" + bytes(253)) * 15 + b"\xfa\xfc" + bytes(250)
        ),
        "length field below 20": bytes((4, 1, 0, 19)) + bytes(16),
        "length field above the datagram": good[:2] + (len(good) + 1).to_bytes(2, "big") + good[4:],
        "unknown code": header_only(code=99),
        "attribute length 0": with_length_field(header_only() + b"\x01\x00abc"),
        "attribute length 1": with_length_field(header_only() + b"\x01\x01abc"),
        "attribute past the end": with_length_field(header_only() + b"\x01\x09abc"),
        "lone type octet": with_length_field(header_only() + b"\x01\x03a\x1f"),
        "Message-Authenticator of 17": with_length_field(header_only() + b"\x50\x11" + bytes(15)),
        "Message-Authenticator of 19": with_length_field(header_only() + b"\x50\x13" + bytes(17)),
        "two Message-Authenticators": with_length_field(header_only() + ma + ma),
        "VSA without a value": with_length_field(header_only() + vsa(b"")),
        "VSA of 3 octets": with_length_field(header_only() + b"\x1a\x05\x00\x00\x09"),
        "Cisco sub-attribute length 0": with_length_field(header_only() + vsa(b"\x18\x00abc")),
        "Cisco sub-attribute length 1": with_length_field(header_only() + vsa(b"\x18\x01abc")),
        "Cisco sub-attribute too long": with_length_field(header_only() + vsa(b"\x18\x06abc")),
        "Cisco trailing octet": with_length_field(header_only() + vsa(cisco_sub + b"\x18")),
        "integer of 3 octets": with_length_field(header_only() + b"\x1b\x05\x00\x00\x01"),
        "ipaddr of 5 octets": with_length_field(header_only() + b"\x04\x07\x01\x02\x03\x04\x05"),
        "ipv6 prefix of 129 bits": with_length_field(header_only() + b"\x61\x04\x00\x81"),
        "CHAP-Password of 16": with_length_field(header_only(1) + b"\x03\x12" + bytes(16)),
        "User-Password of 0": with_length_field(header_only(1) + b"\x02\x02"),
        "User-Password of 144": with_length_field(header_only(1) + b"\x02\x92" + bytes(144)),
    }
    assert len(cases["4097 octets"]) == 4097
    for name, data in cases.items():
        assert reason(data) == "malformed", name
    # the first one in the list that is padded, not short: accepted
    assert codec.decode(good + b"\x00").raw == good
    # a User-Password whose length is not a multiple of 16 decodes, but cannot be decrypted
    packet = codec.decode(with_length_field(header_only(1) + b"\x02\x13" + bytes(17)))
    with pytest.raises(RadiusError) as caught:
        codec.decrypt_password(packet, SECRET)
    assert caught.value.reason == "malformed"
    with pytest.raises(RadiusError):
        codec.decrypt_password(codec.decode(accounting_request()), SECRET)


def test_packet_of_exactly_4096_octets_is_accepted() -> None:
    attributes = [("Class", b"x" * 253)] * 15 + [("Class", b"x" * 249)]
    data = codec.encode_request(
        Code.ACCOUNTING_REQUEST, 1, attributes, SECRET, message_authenticator=False
    )
    assert len(data) == 4096
    codec.verify_request(codec.decode(data), SECRET, require_message_authenticator=False)


# --- CHAP ---------------------------------------------------------------------------------------


def chap_request(ident: int, password: bytes, challenge: bytes | None) -> bytes:
    authenticator = bytes(range(16))
    used = authenticator if challenge is None else challenge
    response = hashlib.md5(bytes((ident,)) + password + used).digest()
    attributes: list[tuple[str, object]] = [
        ("User-Name", "1000123456"),
        ("CHAP-Password", bytes((ident,)) + response),
    ]
    if challenge is not None:
        attributes.append(("CHAP-Challenge", challenge))
    return codec.encode_request(
        Code.ACCESS_REQUEST, 1, attributes, SECRET, authenticator=authenticator
    )


def test_chap_with_the_request_authenticator_as_challenge() -> None:
    packet = codec.decode(chap_request(1, b"password", None))
    ident, challenge, response = codec.chap(packet)  # type: ignore[misc]
    assert (ident, challenge) == (1, bytes(range(16)))
    # known answer, computed outside Python: printf '\x01password\x00\x01...\x0f' | md5sum
    assert response.hex() == "51b4c75f261478f67e37e429440e294d"
    assert codec.chap_matches(packet, b"password")
    assert not codec.chap_matches(packet, b"Password")
    assert not codec.chap_matches(codec.decode(access_request()), b"pin-4711")  # PAP, not CHAP


def test_chap_with_chap_challenge() -> None:
    packet = codec.decode(chap_request(0x2A, b"password", bytes(16)))
    ident, challenge, response = codec.chap(packet)  # type: ignore[misc]
    assert (ident, challenge) == (0x2A, bytes(16))
    assert response.hex() == "74555dedb0e343c3956be71ec88131c8"
    assert codec.chap_matches(packet, b"password")
    pyrad_view = AuthPacket(packet=packet.raw, secret=SECRET, dict=DICT)
    assert pyrad_view.VerifyChapPasswd(b"password")


# --- interoperability with pyrad ----------------------------------------------------------------


def test_we_accept_pyrad_access_request() -> None:
    request = AuthPacket(code=1, id=17, secret=SECRET, dict=DICT)
    request.add_message_authenticator()
    request["User-Name"] = "1000123456"
    request["User-Password"] = request.PwCrypt("pässwörd-is-longer-than-16")
    request["Called-Station-Id"] = "0049301234567"
    request["NAS-IP-Address"] = "192.0.2.10"
    request["h323-conf-id"] = "h323-conf-id=ABC"
    request["Cisco-AVPair"] = ["call-id=x@y", "h323-ivr-out=z"]
    data = request.RequestPacket()

    packet = codec.decode(data)
    codec.verify_request(packet, SECRET, require_message_authenticator=True)
    assert codec.decrypt_password(packet, SECRET).decode() == "pässwörd-is-longer-than-16"
    assert packet.get("NAS-IP-Address") == "192.0.2.10"
    assert packet.cisco("h323-conf-id") == "ABC"
    assert packet.cisco("call-id") == "x@y"
    with pytest.raises(RadiusError) as caught:
        codec.verify_request(packet, OTHER_SECRET, require_message_authenticator=True)
    assert caught.value.reason == "bad_message_authenticator"

    # and pyrad accepts our reply, Message-Authenticator included
    reply = codec.encode_reply(Code.ACCESS_ACCEPT, packet, GRANT, SECRET)
    decoded = request.CreateReply(packet=reply)
    assert request.VerifyReply(decoded, reply, enforce_ma=True)
    assert decoded.verify_message_authenticator(
        secret=SECRET, original_authenticator=request.authenticator, original_code=1
    )
    assert decoded["Session-Timeout"] == [1800]
    assert decoded["h323-credit-time"] == ["h323-credit-time=1800"]
    assert decoded["h323-currency"] == ["h323-currency=EUR"]
    assert next(iter(decoded.keys())) == "Message-Authenticator"
    tampered = bytearray(reply)
    tampered[-1] ^= 1
    assert not request.VerifyReply(request.CreateReply(packet=bytes(tampered)), bytes(tampered))


@pytest.mark.parametrize("message_authenticator", [True, False])
def test_we_accept_pyrad_accounting_request(message_authenticator: bool) -> None:
    request = AcctPacket(code=4, id=33, secret=SECRET, dict=DICT)
    if message_authenticator:
        request.add_message_authenticator()
    request["Acct-Status-Type"] = "Start"
    request["Acct-Session-Id"] = "abc"
    request["Event-Timestamp"] = 1_700_000_000
    request["h323-setup-time"] = "h323-setup-time=10:00:00.000 UTC Mon Jan 1 2024"
    data = request.RequestPacket()
    packet = codec.decode(data)
    codec.verify_request(packet, SECRET, require_message_authenticator=True)
    assert packet.get("Acct-Status-Type") == AcctStatusType.START
    assert packet.get("Event-Timestamp") == 1_700_000_000
    assert packet.cisco("h323-setup-time") == "10:00:00.000 UTC Mon Jan 1 2024"
    with pytest.raises(RadiusError) as caught:
        codec.verify_request(packet, OTHER_SECRET, require_message_authenticator=True)
    assert caught.value.reason == "bad_authenticator"

    reply = codec.encode_reply(
        Code.ACCOUNTING_RESPONSE, packet, [], SECRET, message_authenticator=message_authenticator
    )
    assert request.VerifyReply(request.CreateReply(packet=reply), reply)


def test_pyrad_accepts_our_requests() -> None:
    data = access_request()
    seen = AuthPacket(packet=data, secret=SECRET, dict=DICT)
    assert seen.verify_message_authenticator()
    assert seen.PwDecrypt(seen["User-Password"][0]) == "pin-4711"
    assert seen["h323-conf-id"] == ["h323-conf-id=3B2A1C0D 11E8A0F1 8000AABB CCDDEEFF"]
    assert seen["NAS-IP-Address"] == ["192.0.2.10"]

    data = accounting_request()
    seen = AcctPacket(packet=data, secret=SECRET, dict=DICT)
    assert seen.VerifyAcctRequest()
    assert seen.verify_message_authenticator()
    assert seen["Acct-Status-Type"] == ["Stop"]

    data = codec.encode_request(
        Code.DISCONNECT_REQUEST, 5, [("User-Name", "u"), ("Acct-Session-Id", "s")], SECRET
    )
    seen = CoAPacket(packet=data, secret=SECRET, dict=DICT)
    assert seen.VerifyCoARequest()
    assert seen.verify_message_authenticator()


def test_we_accept_pyrad_disconnect_replies() -> None:
    data = codec.encode_request(
        Code.DISCONNECT_REQUEST, 5, [("User-Name", "u"), ("Acct-Session-Id", "s")], SECRET
    )
    seen = CoAPacket(packet=data, secret=SECRET, dict=DICT)
    reply = seen.CreateReply()
    reply.code = Code.DISCONNECT_NAK
    reply["Error-Cause"] = "Session-Context-Not-Found"
    reply.add_message_authenticator()
    answer = codec.verify_reply(reply.ReplyPacket(), data[4:20], SECRET)
    assert answer.code is Code.DISCONNECT_NAK
    assert answer.get("Error-Cause") == 503


@settings(max_examples=200, deadline=None)
@given(secret=st.binary(min_size=1, max_size=200), message=st.binary(max_size=300))
def test_keyed_hmac_matches_the_standard_library(secret: bytes, message: bytes) -> None:
    keyed = codec._keyed(secret)
    expected = hmac.new(secret, message, "md5").digest()
    assert keyed.hmac_md5(message[:7], message[7:]) == expected
    assert keyed.md5_secret_then(message) == hashlib.md5(secret + message).digest()


@settings(max_examples=200, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=100),
    password=st.binary(max_size=128).map(lambda p: p.rstrip(b"\0")),
)
def test_password_round_trip_and_pyrad_agrees(secret: bytes, password: bytes) -> None:
    data = codec.encode_request(
        Code.ACCESS_REQUEST, 1, [("User-Name", "u"), ("User-Password", password)], secret
    )
    packet = codec.decode(data)
    codec.verify_request(packet, secret, require_message_authenticator=True)
    assert codec.decrypt_password(packet, secret) == password
    seen = AuthPacket(packet=data, secret=secret, dict=DICT)
    assert seen.verify_message_authenticator()
    assert seen.PwDecrypt(seen[2][0]) == password.decode("utf-8", "ignore")


# --- fuzzing ------------------------------------------------------------------------------------

CISCO_NAMES = [name for name, attr in codec.ATTRIBUTES.items() if attr.vendor == 9]


def exercise(data: bytes) -> None:
    """Everything a server or client does with a datagram; only RadiusError may come out."""
    try:
        packet = codec.decode(data)
    except RadiusError as error:
        assert error.reason == "malformed"
        return
    assert isinstance(packet, Packet)
    for required in (True, False):
        with contextlib.suppress(RadiusError):
            codec.verify_request(packet, SECRET, require_message_authenticator=required)
    with contextlib.suppress(RadiusError):
        codec.verify_reply(data, bytes(16), SECRET)
    for name in codec.ATTRIBUTES:
        packet.get(name)
        packet.get_all(name)
        packet.has(name)
    for name in [*CISCO_NAMES, "call-id", ""]:
        packet.cisco(name)
    list(packet.items())
    repr(packet)
    codec.chap(packet)
    codec.chap_matches(packet, b"x")
    with contextlib.suppress(RadiusError):
        codec.decrypt_password(packet, SECRET)


VALID = [
    access_request(),
    accounting_request(),
    chap_request(1, b"password", bytes(16)),
    codec.encode_request(
        Code.ACCOUNTING_REQUEST,
        1,
        [
            ("NAS-IPv6-Address", "::1"),
            ("Framed-IPv6-Prefix", "2001:db8::/32"),
            ("Framed-Interface-Id", "0:0:0:1"),
            ("Cisco-AVPair", "call-id=1"),
            ("Proxy-State", b"p"),
        ],
        SECRET,
    ),
    codec.encode_reply(Code.ACCESS_ACCEPT, codec.decode(access_request()), GRANT, SECRET),
]


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=4200))
def test_fuzz_random_bytes(data: bytes) -> None:
    exercise(data)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    code=st.integers(0, 255),
    body=st.binary(max_size=300),
    extra=st.integers(-3, 3),
)
def test_fuzz_random_attributes_behind_a_plausible_header(
    code: int, body: bytes, extra: int
) -> None:
    length = max(0, 20 + len(body) + extra)
    exercise(struct.pack("!BBH", code, 1, length) + bytes(16) + body)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_fuzz_mutated_valid_packets(data: st.DataObject) -> None:
    packet = bytearray(data.draw(st.sampled_from(VALID)))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["set", "truncate", "insert", "fix_length"]))
        position = data.draw(st.integers(0, max(0, len(packet) - 1)))
        if action == "set" and packet:
            packet[position] = data.draw(st.integers(0, 255))
        elif action == "truncate":
            del packet[position:]
        elif action == "insert":
            packet[position:position] = data.draw(st.binary(min_size=1, max_size=8))
        elif len(packet) >= 4:
            packet[2:4] = len(packet).to_bytes(2, "big")
    exercise(bytes(packet))


# --- radclient (FreeRADIUS) as a foreign client ---------------------------------------------------


def radclient_exchange(
    kind: str, request_text: str, answer: object, wait_seconds: int = 5
) -> tuple[Packet, str]:
    """radclient sends one request to a socket of ours; `answer` turns it into the reply."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        port = sock.getsockname()[1]
        command = ["radclient", "-x", "-r", "1", "-t", str(wait_seconds)]
        command += [f"127.0.0.1:{port}", kind]
        with subprocess.Popen(
            [*command, SECRET.decode()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as client:
            assert client.stdin is not None
            client.stdin.write(request_text)
            client.stdin.close()
            data, address = sock.recvfrom(4096)
            packet = codec.decode(data)
            sock.sendto(answer(packet), address)  # type: ignore[operator]
            assert client.stdout is not None
            output = client.stdout.read()
            client.wait(timeout=30)
    return packet, output


@pytest.mark.skipif(
    shutil.which("radclient") is None,
    reason="radclient is not installed (apt-get install freeradius-utils): interop not run",
)
def test_radclient_talks_to_the_codec() -> None:
    def accept(packet: Packet) -> bytes:
        codec.verify_request(packet, SECRET, require_message_authenticator=True)
        return codec.encode_reply(Code.ACCESS_ACCEPT, packet, GRANT, SECRET)

    packet, output = radclient_exchange(
        "auth",
        'User-Name = "1000123456"\nUser-Password = "pin-4711"\n'
        'Called-Station-Id = "0049301234567"\nh323-conf-id = "h323-conf-id=AB CD"\n'
        "Message-Authenticator = 0x00\n",
        accept,
    )
    assert codec.decrypt_password(packet, SECRET) == b"pin-4711"
    assert packet.cisco("h323-conf-id") == "AB CD"
    assert "Received Access-Accept" in output, output
    assert 'h323-credit-time = "h323-credit-time=1800"' in output, output

    # radclient checks the Message-Authenticator of replies: an Accounting-Response signed
    # over a zero vector and a Disconnect-ACK signed over the Request Authenticator pass
    def account(packet: Packet) -> bytes:
        codec.verify_request(packet, SECRET, require_message_authenticator=True)
        return codec.encode_reply(
            Code.ACCOUNTING_RESPONSE, packet, [], SECRET, message_authenticator=True
        )

    packet, output = radclient_exchange(
        "acct",
        'Acct-Status-Type = Stop\nAcct-Session-Id = "s-1"\nAcct-Session-Time = 61\n',
        account,
    )
    assert packet.get("Acct-Session-Time") == 61
    assert "Received Accounting-Response" in output, output

    def acknowledge(packet: Packet) -> bytes:
        codec.verify_request(packet, SECRET, require_message_authenticator=True)
        return codec.encode_reply(
            Code.DISCONNECT_ACK, packet, [], SECRET, message_authenticator=True
        )

    packet, output = radclient_exchange(
        "disconnect", 'User-Name = "1000123456"\nAcct-Session-Id = "s-1"\n', acknowledge
    )
    assert "Received Disconnect-ACK" in output, output

    # and it is awake: a Message-Authenticator we broke is refused
    def forge(packet: Packet) -> bytes:
        reply = bytearray(codec.encode_reply(Code.ACCESS_ACCEPT, packet, GRANT, SECRET))
        reply[25] ^= 1
        signed = bytes(reply[:4]) + packet.authenticator + bytes(reply[20:]) + SECRET
        reply[4:20] = hashlib.md5(signed).digest()
        return bytes(reply)

    _, output = radclient_exchange(
        "auth",
        'User-Name = "x"\nUser-Password = "y"\nMessage-Authenticator = 0x00\n',
        forge,
        wait_seconds=1,  # radclient drops the reply, then waits this long for another
    )
    assert "invalid Message-Authenticator" in output, output
    assert "Received Access-Accept" not in output, output


# --- tshark as a judge of the wire format -------------------------------------------------------


def _ipv4_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack("!10H", header))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _ip_udp(source_port: int, destination_port: int, payload: bytes, ident: int) -> bytes:
    udp = struct.pack("!HHHH", source_port, destination_port, 8 + len(payload), 0) + payload
    localhost = bytes((127, 0, 0, 1))
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, 0, 64, 17, 0, localhost, localhost
    )
    ip = ip[:10] + struct.pack("!H", _ipv4_checksum(ip)) + ip[12:]
    return ip + udp


def write_pcap(path: Path, frames: list[tuple[int, int, bytes]]) -> None:
    """Classic pcap, LINKTYPE_RAW (101): IPv4 frames without a link-layer header."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)]
    for number, (source, destination, payload) in enumerate(frames):
        frame = _ip_udp(source, destination, payload, number)
        out.append(struct.pack("<IIII", 1_700_000_000, number, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def tshark_fields(path: Path, *fields: str) -> list[dict[str, str]]:
    command = ["tshark", "-2", "-r", str(path), "-n"]
    command += ["-o", f"radius.shared_secret:{SECRET.decode()}"]
    command += ["-o", "radius.validate_authenticator:TRUE"]
    command += ["-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=|"]
    for field in ("frame.number", *fields):
        command += ["-e", field]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    rows = []
    for line in done.stdout.splitlines():
        values = line.split("\t")
        rows.append(dict(zip(("frame.number", *fields), values, strict=True)))
    return rows


JUDGE_FIELDS = (
    "radius.code",
    "radius.id",
    "radius.authenticator.valid",
    "_ws.malformed",
    "_ws.expert.severity",
    "radius.User_Password",
    "radius.h323_credit_time",
    "radius.Reply_Message",
    "radius.Error_Cause",
)
EXPERT_WARNING = 0x600000  # Wireshark's PI_WARN; errors (malformed) are 0x800000


@pytest.mark.skipif(
    shutil.which("tshark") is None,
    reason="tshark is not installed (apt-get install tshark): wire-format judgement not run",
)
def test_tshark_judges_our_packets(tmp_path: Path) -> None:
    long_message = "insufficient_funds " + "x" * 400
    auth = access_request()
    auth_request = codec.decode(auth)
    accept = codec.encode_reply(Code.ACCESS_ACCEPT, auth_request, GRANT, SECRET)
    auth2 = access_request(message_authenticator=False)
    reject = codec.encode_reply(
        Code.ACCESS_REJECT,
        codec.decode(auth2),
        [("Reply-Message", long_message), ("h323-return-code", 4)],
        SECRET,
    )
    start = codec.encode_request(
        Code.ACCOUNTING_REQUEST,
        10,
        [("Acct-Status-Type", "Start"), ("Acct-Session-Id", "s-1"), ("User-Name", "1000")],
        SECRET,
    )
    start_reply = codec.encode_reply(Code.ACCOUNTING_RESPONSE, codec.decode(start), [], SECRET)
    stop = accounting_request(message_authenticator=False)
    stop_reply = codec.encode_reply(
        Code.ACCOUNTING_RESPONSE, codec.decode(stop), [], SECRET, message_authenticator=True
    )
    disconnect = codec.encode_request(
        Code.DISCONNECT_REQUEST, 11, [("User-Name", "1000"), ("Acct-Session-Id", "s-1")], SECRET
    )
    nak = codec.encode_reply(
        Code.DISCONNECT_NAK,
        codec.decode(disconnect),
        [("Error-Cause", "Session-Context-Not-Found")],
        SECRET,
        message_authenticator=True,
    )
    ours = [
        (40000, 1812, auth),
        (1812, 40000, accept),
        (40001, 1812, auth2),
        (1812, 40001, reject),
        (40002, 1813, start),
        (1813, 40002, start_reply),
        (40003, 1813, stop),
        (1813, 40003, stop_reply),
        (40004, 3799, disconnect),
        (3799, 40004, nak),
    ]
    path = tmp_path / "ours.pcap"
    write_pcap(path, ours)
    rows = tshark_fields(path, *JUDGE_FIELDS)
    assert len(rows) == len(ours)
    for row, (_, _, payload) in zip(rows, ours, strict=True):
        assert int(row["radius.code"]) == payload[0], row
        assert row["_ws.malformed"] == "", row
        severities = [int(s, 0) for s in row["_ws.expert.severity"].split("|") if s]
        assert all(s < EXPERT_WARNING for s in severities), row
        # tshark checks Response Authenticators and (when it has seen the exchange, hence -2)
        # the Request Authenticator of an Accounting-Request
        if payload[0] != Code.ACCESS_REQUEST and payload[0] != Code.DISCONNECT_REQUEST:
            assert row["radius.authenticator.valid"] == "1", row
    assert rows[0]["radius.User_Password"] == "pin-4711"  # decrypted with the shared secret
    assert rows[1]["radius.h323_credit_time"] == "h323-credit-time=1800"
    assert rows[3]["radius.Reply_Message"].replace("|", "") == long_message
    assert rows[9]["radius.Error_Cause"] == "503"

    # The judge is awake: it flags what we refuse to decode and an authenticator we broke.
    broken_reply = bytearray(start_reply)
    broken_reply[5] ^= 1
    too_long = bytearray(stop)
    too_long[20 + 1] = 255  # the first attribute runs past the end
    cisco_broken = with_length_field(header_only() + b"\x1a\x07\x00\x00\x00\x09\x17")
    controls = [
        (40002, 1813, start),
        (1813, 40002, bytes(broken_reply)),
        (40005, 1813, bytes(too_long)),
        (40006, 1813, cisco_broken),
    ]
    write_pcap(path, controls)
    rows = tshark_fields(path, *JUDGE_FIELDS)
    assert rows[1]["radius.authenticator.valid"] == "0"
    with pytest.raises(RadiusError):
        codec.verify_reply(bytes(broken_reply), start[4:20], SECRET)
    for row, (_, _, payload) in zip(rows[2:], controls[2:], strict=True):
        assert row["_ws.malformed"] != "", row
        assert reason(payload) == "malformed"
