import pytest

from portal.config import ConfigurationError, load_settings


def test_production_requires_each_variable(tmp_path):
    environ = {
        "PORTAL_MODE": "production",
        "PORTAL_SECRET_KEY": "x",
        "PORTAL_DATABASE_URL": "sqlite://",
    }
    with pytest.raises(ConfigurationError, match="PORTAL_ENCRYPTION_KEYS is not set"):
        load_settings(str(tmp_path), environ)
    assert not (tmp_path / "encryption_keys").exists()


def test_embedded_creates_keys_once(tmp_path):
    first = load_settings(str(tmp_path), {})
    second = load_settings(str(tmp_path), {})
    assert first["ENCRYPTION_KEYS"] == second["ENCRYPTION_KEYS"]
    assert first["SECRET_KEY"] == second["SECRET_KEY"]
    assert (tmp_path / "encryption_keys").stat().st_mode & 0o777 == 0o600
    assert first["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")


def test_malformed_key_is_rejected(tmp_path):
    with pytest.raises(ConfigurationError, match="malformed key"):
        load_settings(str(tmp_path), {"PORTAL_ENCRYPTION_KEYS": "not-a-key"})


def test_key_list_keeps_order(tmp_path):
    from cryptography.fernet import Fernet

    keys = [Fernet.generate_key().decode() for _ in range(2)]
    settings = load_settings(str(tmp_path), {"PORTAL_ENCRYPTION_KEYS": ",".join(keys)})
    assert settings["ENCRYPTION_KEYS"] == keys


def test_unknown_mode_is_rejected(tmp_path):
    with pytest.raises(ConfigurationError, match="PORTAL_MODE"):
        load_settings(str(tmp_path), {"PORTAL_MODE": "staging"})
