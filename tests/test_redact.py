"""The one redaction function, over every URL form a user can write a password in."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tuner.core.redact import redact

SECRET = "Pw@1:%{x}"
ENC = quote(SECRET, safe="")

CASES = [
    # (text, what must remain)
    (f"postgresql://tuner:{ENC}@db:5432/tuner", "postgresql://tuner:***@db:5432/tuner"),
    (f"postgresql+psycopg://tuner:{SECRET}@db/tuner", "postgresql+psycopg://tuner:***@db/tuner"),
    (f"postgresql://tuner@db/t?password={ENC}", "postgresql://tuner@db/t?password=***"),
    ("postgresql://u@db/t?sslmode=require&sslpassword=k3y-Secret",
     "postgresql://u@db/t?sslmode=require&sslpassword=***"),
    ("mysql://u@h/d?charset=utf8&PWD=Secret99", "mysql://u@h/d?charset=utf8&PWD=***"),
    ("http://u:tok3n-Secret@mlflow:5000", "http://u:***@mlflow:5000"),
    ("host=db port=5432 password=Secret99 dbname=t", "host=db port=5432 password=*** dbname=t"),
    ("https://h/x?api_key=abcd1234&x=1", "https://h/x?api_key=***&x=1"),
    # broken URLs, as users write them
    ("postgresql:/tuner:Secret99@db/t", "postgresql:/tuner:***@db/t"),
    ("tuner:Secret99@db:5432/tuner", "tuner:***@db:5432/tuner"),
    # references to secrets stay as written
    ("postgresql://u:${PGPASSWORD}@db/t?password=${PW}", "postgresql://u:${PGPASSWORD}@db/t?password=${PW}"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_every_url_form_loses_its_password(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_text_without_passwords_is_unchanged() -> None:
    text = (
        "sqlite:///tuner.db sqlite:////abs/mlflow.db http://127.0.0.1:5000/api/2.0/runs?run_id=ab "
        "mailto bob@example.com trial 3 lr=0.1 postgresql://tuner@db/tuner"
    )
    assert redact(text) == text


def test_a_password_found_once_is_hidden_everywhere_in_any_form() -> None:
    url = f"postgresql://u:{ENC}@db/t"
    # A driver's message may quote the password decoded, far from its URL.
    message = f"cannot connect to {url}: password {SECRET!r} rejected ({ENC})"
    out = redact(message)
    assert SECRET not in out and ENC not in out
    # And the URL need not be in the text at all when it is passed along.
    assert redact(f"auth failed for {SECRET}", url) == "auth failed for ***"
