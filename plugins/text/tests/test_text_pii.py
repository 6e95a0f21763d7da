"""text.redact_pii: typed placeholders, checksums that keep false positives out, counts."""

from __future__ import annotations

import pytest

from privet import ConfigError
from privet_text.pii import iban_ok, luhn_ok

#: (input, expected output) pairs: the PII fixture of the acceptance criteria.
FIXTURE = [
    ("Write to john.doe+news@example.co.uk or JANE_R@mail.corp.io today.",
     "Write to <EMAIL> or <EMAIL> today."),
    ("Call +44 20 7946 0958, (555) 123-4567, 555.123.4567 or +1-800-555-0199 now.",
     "Call <PHONE>, <PHONE>, <PHONE> or <PHONE> now."),
    ("Visa 4111 1111 1111 1111 and MC 5500-0000-0000-0004 were charged.",
     "Visa <CARD> and MC <CARD> were charged."),
    ("Amex 3782 822463 10005, plain 4012888888881881.",
     "Amex <CARD>, plain <CARD>."),
    # Luhn fails: not a card, and not half-redacted as a phone either
    ("Ticket 4111 1111 1111 1112 and 1234567812345678 are order numbers.",
     "Ticket 4111 1111 1111 1112 and 1234567812345678 are order numbers."),
    ("Pay to DE89 3704 0044 0532 0130 00 NOW or GB82WEST12345698765432.",
     "Pay to <IBAN> NOW or <IBAN>."),
    ("Bad IBAN DE00 3704 0044 0532 0130 00 stays.",
     "Bad IBAN DE00 3704 0044 0532 0130 00 stays."),
    ("Hosts 192.168.1.20 and 2001:db8::8a2e:370:7334 answered; 999.1.1.1 did not.",
     "Hosts <IP> and <IP> answered; 999.1.1.1 did not."),
    ("Dates 2024-01-15 and times 12:30:45, version 1.2.3.4.5, price 1234 5678 stay.",
     "Dates 2024-01-15 and times 12:30:45, version 1.2.3.4.5, price 1234 5678 stay."),
]


@pytest.fixture
def redactor(host):
    return host.make("cleaner", "text.redact_pii")


@pytest.mark.parametrize("text,expected", FIXTURE)
def test_fixture_is_redacted_exactly(redactor, text, expected):
    assert redactor.clean({"text": text})["text"] == expected


def test_counts_by_type_go_to_the_report(redactor):
    for text, _ in FIXTURE:
        redactor.clean({"text": text})
    assert redactor.report() == {"CARD": 4, "EMAIL": 2, "IBAN": 2, "IP": 2, "PHONE": 4}


def test_custom_national_id_patterns_get_their_own_placeholder(host):
    cleaner = host.make("cleaner", "text.redact_pii", {
        "patterns": {"SSN": r"\b\d{3}-\d{2}-\d{4}\b", "AHV": r"\b756\.\d{4}\.\d{4}\.\d{2}\b"}})
    out = cleaner.clean({"text": "SSN 123-45-6789, AHV 756.1234.5678.97, phone 555-123-4567."})
    assert out["text"] == "SSN <SSN>, AHV <AHV>, phone <PHONE>."
    assert cleaner.report() == {"AHV": 1, "PHONE": 1, "SSN": 1}


def test_types_and_placeholder_are_configurable(host):
    cleaner = host.make("cleaner", "text.redact_pii", {"types": ["EMAIL"], "placeholder": "[{type}]"})
    out = cleaner.clean({"text": "a@b.com 192.168.0.1 +44 20 7946 0958"})
    assert out["text"] == "[EMAIL] 192.168.0.1 +44 20 7946 0958"


def test_redacts_every_named_field(host):
    cleaner = host.make("cleaner", "text.redact_pii", {"fields": ["text", "title"]})
    out = cleaner.clean({"text": "mail me: a@b.org", "title": "from c@d.net", "label": "x"})
    assert out == {"text": "mail me: <EMAIL>", "title": "from <EMAIL>", "label": "x"}


def test_chinese_text_with_pii(redactor):
    out = redactor.clean({"text": "请联系张先生：zhang.san@example.cn，电话 +86 138 0013 8000。"})
    assert out["text"] == "请联系张先生：<EMAIL>，电话 <PHONE>。"


@pytest.mark.parametrize("options,message", [
    ({"types": ["EMAIL", "SSN"]}, "unknown PII type"),
    ({"patterns": {"ssn": r"\d"}}, "must be UPPER_CASE"),
    ({"patterns": {"SSN": "("}}, "invalid regular expression"),
    ({"placeholder": "<redacted>"}, "must contain {type}"),
])
def test_bad_options_are_config_errors(host, options, message):
    with pytest.raises(ConfigError, match=message):
        host.make("cleaner", "text.redact_pii", options)


def test_luhn_and_iban_checks():
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112") and not luhn_ok("79927398710")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and iban_ok("GB82WEST12345698765432")
    assert not iban_ok("DE88 3704 0044 0532 0130 00") and not iban_ok("GB82")


def test_custom_patterns_run_on_text_without_digits_or_at_signs(host):
    cleaner = host.make("cleaner", "text.redact_pii", {"patterns": {"EMPLOYEE": r"\bEMP-[A-Z]{4}\b"}})
    assert cleaner.clean({"text": "badge EMP-QXZW lost"})["text"] == "badge <EMPLOYEE> lost"


def test_digits_of_other_scripts_are_checked_and_redacted_too(redactor):
    """Full-width digits (common in Chinese text) are PII too, even before NFKC."""
    out = redactor.clean({"text": "卡号 ４１１１ １１１１ １１１１ １１１１，电话 +８６ １３８ ００１３ ８０００。"
                                  "订单 ４１１１ １１１１ １１１１ １１１２"})
    assert out["text"] == "卡号 <CARD>，电话 <PHONE>。订单 ４１１１ １１１１ １１１１ １１１２"


# --- every string field that reaches the cache -------------------------------------------------


def test_every_string_field_is_redacted_by_default(redactor):
    out = redactor.clean({
        "text": "write to a@b.org", "label": "ask c@d.net", "author": "Eve <eve@corp.example>",
        "messages": [{"role": "user", "content": "call +44 20 7946 0958"},
                     {"role": "assistant", "content": "ok, e@f.io"}],
        "tags": ["x", "10.20.30.40"], "score": 3, "missing": None})
    assert out == {
        "text": "write to <EMAIL>", "label": "ask <EMAIL>", "author": "Eve <<EMAIL>>",
        "messages": [{"role": "user", "content": "call <PHONE>"},
                     {"role": "assistant", "content": "ok, <EMAIL>"}],
        "tags": ["x", "<IP>"], "score": 3, "missing": None}
    assert redactor.report() == {"EMAIL": 4, "IP": 1, "PHONE": 1}


def test_a_field_left_alone_that_holds_pii_is_warned_about_once_and_counted(host):
    from privet_text.pii import PiiWarning

    cleaner = host.make("cleaner", "text.redact_pii", {"skip_fields": ["author"]})
    with pytest.warns(PiiWarning, match=r"field 'author' holds PII \(EMAIL\).*skip_fields") as caught:
        for i in range(3):
            out = cleaner.clean({"text": f"mail {i}@x.org", "author": f"a{i}@corp.example"})
            assert out["author"] == f"a{i}@corp.example" and out["text"] == "mail <EMAIL>"
        cleaner.clean({"text": "hi", "author": "nobody"})
    assert len([w for w in caught if issubclass(w.category, PiiWarning)]) == 1
    assert cleaner.report() == {"EMAIL": 3, "unredacted.author": 3}


def test_fields_named_explicitly_leave_the_others_alone_with_a_warning(host):
    from privet_text.pii import PiiWarning

    cleaner = host.make("cleaner", "text.redact_pii", {"fields": ["text"]})
    with pytest.warns(PiiWarning, match=r"field 'label' .*not listed in fields"):
        out = cleaner.clean({"text": "a@b.org", "label": "c@d.net"})
    assert out == {"text": "<EMAIL>", "label": "c@d.net"}


def test_fields_and_skip_fields_together_are_a_config_error(host):
    with pytest.raises(ConfigError, match="set fields .* or skip_fields"):
        host.make("cleaner", "text.redact_pii", {"fields": ["text"], "skip_fields": ["author"]})


def test_counts_start_again_on_each_pass_over_the_data(redactor):
    """The engine streams the source once more per fitting cleaner: count the last pass only."""
    for _ in range(2):
        redactor.start_pass()
        redactor.clean({"text": "a@b.org and c@d.net", "author": "e@f.io"})
    assert redactor.report() == {"EMAIL": 3}


def test_a_catastrophic_custom_pattern_finishes_and_backreferences_are_refused(host):
    cleaner = host.make("cleaner", "text.redact_pii", {"patterns": {"EVIL": r"(a+)+$"}})
    assert cleaner.clean({"text": "a" * 40 + "!"})["text"] == "a" * 40 + "!"
    with pytest.raises(ConfigError, match=r"patterns\.ID: invalid regular expression.*RE2"):
        host.make("cleaner", "text.redact_pii", {"patterns": {"ID": r"(\d)\1{3}"}})
