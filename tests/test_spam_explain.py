"""Explaining and classifying one message (chainrule.apps.spam.explain): never raises on any
bytes, and an SMS pasted without headers reaches the features an SMS was trained on."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainrule.apps.spam import SpamModel, build_network, classify_message, explain_row, looks_like_email
from chainrule.data.mime import parse_message
from chainrule.data.text import HashingConfig, message_tokens, sms_tokens

_TINY = SpamModel(build_network(1 << 10, (4,), seed=0), {"task": "spam"}, HashingConfig(n_features=1 << 10),
                  spam_cutoff=0.9, ham_cutoff=0.1)


@st.composite
def _mime(draw):
    boundary = draw(st.sampled_from(["a", "", "x y"]))
    parts = draw(st.lists(st.tuples(st.sampled_from(["text/plain", "text/html", "image/png", "multipart/mixed"]),
                                    st.sampled_from(["base64", "quoted-printable", "8bit", "nonsense"]),
                                    st.sampled_from(["utf-8", "latin-1", "x-bogus", "utf-7"]),
                                    st.binary(max_size=200)), max_size=4))
    body = b"".join(f"--{boundary}\nContent-Type: {c}; charset={cs}\nContent-Transfer-Encoding: {e}\n\n".encode()
                    + payload + b"\n" for c, e, cs, payload in parts)
    return f'Subject: x\nContent-Type: multipart/mixed; boundary="{boundary}"\n\n'.encode() + body


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=3000), _mime()))
def test_property_classifier_never_raises(raw):
    r = classify_message(_TINY, raw)
    assert r["label"] in ("spam", "ham", "unsure") and 0.0 <= r["probability"] <= 1.0


def test_classify_message_tokenises_an_sms_as_training_saw_it():
    """Pasted text with no email headers is an SMS: it must reach the same hashed features as the
    SMS lines the model was trained on, not the features of a header-less email."""
    sms = "URGENT: You have won a £900 prize! Call 09061701461 or visit www.win.example now"
    assert not looks_like_email(sms.encode())
    assert sms_tokens(sms, _TINY.config) != message_tokens(parse_message(sms.encode()), _TINY.config)
    assert classify_message(_TINY, sms.encode())["probability"] == pytest.approx(
        explain_row(_TINY, sms_tokens(sms, _TINY.config))[0], abs=1e-7)

    email = b"Received: from mx.example\nFrom: a@example.com\nSubject: URGENT: call now\n\nhello"
    for raw in (email, b"From a@example.com Mon Jan  1 00:00:00 2024\n" + email, b"X-Spam: no\n\nhi"):
        assert looks_like_email(raw), raw
        assert classify_message(_TINY, raw)["probability"] == pytest.approx(
            explain_row(_TINY, message_tokens(parse_message(raw), _TINY.config))[0], abs=1e-7)
