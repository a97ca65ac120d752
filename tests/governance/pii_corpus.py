"""A labelled sample for the personal-data detectors: each text with what it holds, by kind and value.
Negatives are the look-alikes tools return all the time: order numbers, dates, versions, UUIDs, hashes,
timestamps, prices, ISBNs. All values are made up; card numbers and IBANs are the documented test
numbers or made-up ones with valid checksums."""

from __future__ import annotations

KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnz\n-----END RSA PRIVATE KEY-----"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"

SAMPLES: list[tuple[str, list[tuple[str, str]]]] = [
    ("Contact alice.smith@example.com for details.", [("email", "alice.smith@example.com")]),
    ("Reply to ops+alerts@mail.acme-corp.co.uk today", [("email", "ops+alerts@mail.acme-corp.co.uk")]),
    ("Emails: a@b.io, Bob <bob_99@sub.example.org>", [("email", "a@b.io"), ("email", "bob_99@sub.example.org")]),
    ("Call +1 415 555 0134 or +44 20 7946 0958.", [("phone", "+1 415 555 0134"), ("phone", "+44 20 7946 0958")]),
    ("Office: (555) 123-4567, mobile 555-987-6543", [("phone", "(555) 123-4567"), ("phone", "555-987-6543")]),
    ("Ring 020 7946 0958 after six.", [("phone", "020 7946 0958")]),
    ("International: +4915123456789", [("phone", "+4915123456789")]),
    ("Card 4111 1111 1111 1111 exp 12/29", [("card", "4111 1111 1111 1111")]),
    ("Paid with 5555-5555-5555-4444.", [("card", "5555-5555-5555-4444")]),
    ("Amex 378282246310005 on file", [("card", "378282246310005")]),
    ("IBAN: DE89 3704 0044 0532 0130 00", [("iban", "DE89 3704 0044 0532 0130 00")]),
    ("Transfer to GB82WEST12345698765432 please", [("iban", "GB82WEST12345698765432")]),
    ("SSN 123-45-6789 on the form", [("ssn", "123-45-6789")]),
    ("Client IP 203.0.113.42 was blocked", [("ip", "203.0.113.42")]),
    ("IPv6 2001:db8:85a3::8a2e:370:7334 seen", [("ip", "2001:db8:85a3::8a2e:370:7334")]),
    ("AWS key AKIAIOSFODNN7EXAMPLE leaked", [("secret", "AKIAIOSFODNN7EXAMPLE")]),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dcXY here", [("secret", "sk_live_4eC39HqLyjWDarjtT1zdp7dcXY")]),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789 ok", [("secret", "ghp_abcdefghijklmnopqrstuvwxyz0123456789")]),
    (f"Bearer {JWT}", [("secret", JWT)]),
    (f"key:\n{KEY}\nend", [("secret", KEY)]),
    ("slack xoxb-1234567890-abcdefghij works", [("secret", "xoxb-1234567890-abcdefghij")]),
    (
        "Mixed: jane@corp.example, +33 1 42 68 53 00, 10.0.0.7",
        [("email", "jane@corp.example"), ("phone", "+33 1 42 68 53 00"), ("ip", "10.0.0.7")],
    ),
    # --- look-alikes that are not personal data ---
    ("Order 4111111111111112 shipped", []),  # fails Luhn
    ("Invoice INV-2024-000123 due 2024-07-01", []),
    ("Released v1.2.3.4 and version 10.0.0.1 builds", []),
    ("Request id 550e8400-e29b-41d4-a716-446655440000", []),
    ("sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", []),
    ("Timestamp 1717171717123 and epoch 1717171717", []),
    ("Price $1,234.56 for 12 items; total 14,814.72", []),
    ("ISBN 978-3-16-148410-0 in stock", []),
    ("The meeting is on 12/05/2024 at 10:30", []),
    ("Coordinates 48.8566, 2.3522", []),
    ("Build 20240601.3 passed 1234 tests in 56.78s", []),
    ("Use user@localhost for local testing", []),  # no TLD
    ("Ratio 3:4:5 and time 12:30:45", []),
    ("Call the function foo::bar::baz()", []),
    ("Account number 12345678 at branch 001", []),
    ("Reference DE00 not an IBAN at all", []),
    ("SKU 123-45-67890 on the shelf", []),
    ("Tracking 1Z999AA10123456784 is in transit", []),
    ("Temperature 21.5 C, pressure 1013 hPa", []),
    ("Version string 2.10.0-rc.1", []),
    ("The year 2025 had 365 days and 8760 hours", []),
    ("Matrix [[1, 2], [3, 4]] and list 5-6-7", []),
    ("Port 8080 on host db.internal", []),
    ("Docker image sha sk-is-not-a-key", []),
]
