"""URL settings (SMTP_URL, STAFF_ALERT_URL, ADMIN_BASE_URL), MAIL_FROM and SECRET_KEY as read at start:
a value the service could not send, alert or sign with stops the process with one line naming it."""
from __future__ import annotations

import pytest

from models.settings import Settings


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # instance/secret_key, when made, is made here
    return {"DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}", "SECRET_KEY": "k" * 40,
            "MAIL_FROM": "Shop <shop@shop.test>", "ADMIN_BASE_URL": "https://shop.test"}


@pytest.mark.parametrize(("value", "shown"), [
    ("smtp://mail.internal:25x", "'smtp://mail.internal:25x'"),   # every mail: "Port could not be cast to integer"
    ("smtp://mail.internal:99999", "'smtp://mail.internal:99999'"),
    ("smtp://mail.internal:0", "'smtp://mail.internal:0'"),
    ("mail.internal:25", "'mail.internal:25'"),                    # no scheme: mail went to localhost:25
    ("http://mail.internal", "'http://mail.internal'"),            # sent as plain SMTP
    ("smtp:///", "'smtp:///…'"),                                   # no host
    ("smtp://shop:s3cret@:25", "'smtp://shop:***@:25'"),           # no host, and the password never shown
    ("shop:s3cret@mail.internal", "'shop:***@mail.internal'"),
])
def test_an_smtp_url_no_mail_can_be_sent_with_stops_the_process_naming_it(env, value, shown):
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({**env, "SMTP_URL": value})
    message = str(stopped.value.code)
    assert message.startswith("SMTP_URL must be smtp://host:port or smtps://host:port"), message
    assert message.endswith(f"got {shown}") and "s3cret" not in message, message


@pytest.mark.parametrize("value", ["smtp://mail.internal:25", "smtp://mail.internal", "smtps://shop:pw@mail.internal:465",
                                   "SMTP://Mail.Internal:587"])
def test_an_smtp_url_with_a_host_and_a_port_is_taken_as_given(env, value):
    assert Settings.from_env({**env, "SMTP_URL": value}).smtp_url == value


@pytest.mark.parametrize(("name", "value", "shown"), [
    ("STAFF_ALERT_URL", "hooks.slack.com/services/T0/B0/token", "'hooks.slack.com/…'"),  # the token is not shown
    ("STAFF_ALERT_URL", "ftp://hooks.internal/alert", "'ftp://hooks.internal/…'"),
    ("STAFF_ALERT_URL", "https:///services/T0", "'https:///…'"),
    ("STAFF_ALERT_URL", "https://hooks.internal:80a/x", "'https://hooks.internal:80a/…'"),
    ("ADMIN_BASE_URL", "shop.example.com", "'shop.example.com'"),   # links that are not links, cookies never Secure
    ("ADMIN_BASE_URL", "//shop.example.com", "'//shop.example.com'"),
    ("ADMIN_BASE_URL", "https://", "'https://'"),
])
def test_an_http_url_setting_without_a_scheme_or_host_stops_the_process_naming_it(env, name, value, shown):
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({**env, name: value})
    message = str(stopped.value.code)
    assert message.startswith(f"{name} must be ") and "http:// or https://" in message, message
    assert message.endswith(f"got {shown}") and "token" not in message, message


def test_http_url_settings_with_a_scheme_and_a_host_are_taken_as_given(env):
    settings = Settings.from_env({**env, "STAFF_ALERT_URL": "https://hooks.slack.com/services/T0/B0/token",
                                  "ADMIN_BASE_URL": "http://10.0.0.5:8000/shop/"})
    assert settings.staff_alert_url == "https://hooks.slack.com/services/T0/B0/token"
    assert settings.admin_base_url == "http://10.0.0.5:8000/shop"
    unset = Settings.from_env({**env, "STAFF_ALERT_URL": "", "ADMIN_BASE_URL": ""})
    assert (unset.staff_alert_url, unset.admin_base_url) == (None, Settings.admin_base_url)


def test_mail_sent_through_smtp_needs_mail_from_not_the_example_com_default(env):
    del env["MAIL_FROM"]
    # Mails only logged: the default is never seen by anyone.
    assert Settings.from_env(env).mail_from == "shop@example.com"
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({**env, "SMTP_URL": "smtp://mail.internal:25"})
    assert str(stopped.value.code).startswith("MAIL_FROM must be set when SMTP_URL is"), stopped.value.code
    settings = Settings.from_env({**env, "SMTP_URL": "smtp://mail.internal:25", "MAIL_FROM": "orders@shop.test"})
    assert settings.mail_from == "orders@shop.test"


@pytest.mark.parametrize("value", ["shop", "Shop <shop>", "shop@shop.test\nBcc: all@shop.test"])
def test_a_mail_from_that_is_not_one_address_stops_the_process_naming_it(env, value):
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({**env, "MAIL_FROM": value})
    assert str(stopped.value.code).startswith("MAIL_FROM must be one e-mail address"), stopped.value.code


def test_no_secret_key_and_no_instance_folder_to_make_one_in_stops_the_web_server_naming_secret_key(env, tmp_path):
    del env["SECRET_KEY"]
    (tmp_path / "instance").write_text("not a folder")  # as unwritable as it gets, even for root
    settings = Settings.from_env(env)  # a worker or a CLI verb signs nothing: it starts
    assert settings.secret_key is None
    with pytest.raises(SystemExit) as stopped:
        settings.require_secret_key()  # what gunicorn's master asks before it starts a web process
    message = str(stopped.value.code)
    assert message.startswith(f"SECRET_KEY is not set and {tmp_path / 'instance' / 'secret_key'} cannot be made"), message
    assert "set SECRET_KEY to one random value shared by every web process" in message
    assert "\n" not in message
    # Set, it is used whatever the folder: nothing is written.
    with_key = Settings.from_env({**env, "SECRET_KEY": "from-the-environment"})
    assert with_key.secret_key == "from-the-environment"
    with_key.require_secret_key()

@pytest.mark.parametrize(("name", "value", "shown"), [
    ("STRIPE_API_BASE", "127.0.0.1:8420", "'127.0.0.1:8420'"),   # no scheme: every checkout answered 502
    ("STRIPE_API_BASE", "notaurl", "'notaurl'"),
    ("STRIPE_API_BASE", "http://", "'http://'"),
    ("STRIPE_API_BASE", "ftp://stripe.internal", "'ftp://stripe.internal'"),
    ("STRIPE_JS_URL", "js.stripe.com/v3/", "'js.stripe.com/…'"),   # every card form without Stripe.js
    ("STRIPE_JS_URL", "https:///v3/", "'https:///…'"),
])
def test_a_stripe_url_without_a_scheme_or_host_stops_the_process_naming_it(env, name, value, shown):
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({**env, name: value})
    message = str(stopped.value.code)
    assert message.startswith(f"{name} must be an http:// or https:// URL with a host"), message
    assert message.endswith(f"got {shown}") and "\n" not in message, message


def test_stripe_urls_with_a_scheme_and_a_host_are_taken_as_given_and_unset_means_stripe_itself(env):
    settings = Settings.from_env({**env, "STRIPE_API_BASE": "http://127.0.0.1:8420",
                                  "STRIPE_JS_URL": "http://127.0.0.1:8420/js.stripe.com/v3/"})
    assert (settings.stripe_api_base, settings.stripe_js_url) == (
        "http://127.0.0.1:8420", "http://127.0.0.1:8420/js.stripe.com/v3/")
    unset = Settings.from_env({**env, "STRIPE_API_BASE": "", "STRIPE_JS_URL": ""})
    assert (unset.stripe_api_base, unset.stripe_js_url) == (None, "https://js.stripe.com/v3/")


@pytest.mark.parametrize(("value", "entry", "said"), [
    ("sk_test_51AbCdEfGhIjKlMnOp", "entry 1 of 1", "it starts 'sk_test_': an API key, not a signing secret"),
    ("whsec_current, sk_live_51AbCdEfGhIjKlMnOp", "entry 2 of 2", "it starts 'sk_live_'"),
    ("whsec_current,pasted-something-else", "entry 2 of 2", "does not"),
])
def test_a_webhook_secret_that_is_not_a_whsec_signing_secret_stops_the_process_without_showing_it(
        env, value, entry, said):
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({**env, "STRIPE_WEBHOOK_SECRETS": value})
    message = str(stopped.value.code)
    assert message.startswith("STRIPE_WEBHOOK_SECRETS must be the webhook endpoints' signing secrets, each "
                              "starting whsec_"), message
    assert f"{entry} does not" in message and said in message, message
    assert "AbCdEf" not in message and "something-else" not in message and "current" not in message


def test_whsec_webhook_secrets_are_taken_as_given(env):
    settings = Settings.from_env({**env, "STRIPE_WEBHOOK_SECRETS": " whsec_current , whsec_next ,"})
    assert settings.webhook_secrets == ("whsec_current", "whsec_next")
    assert Settings.from_env({**env, "STRIPE_WEBHOOK_SECRETS": ""}).webhook_secrets == ()
