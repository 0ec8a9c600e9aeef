"""Settings: embedded defaults, the TOML file, environment overrides and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import CONFIG_ENV_VAR, ConfigError, Settings, load_settings, masked_url


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_match_the_design() -> None:
    """Without a file or variables the node runs embedded on the documented defaults."""
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.dicom.port == 11112
    assert settings.dicom.ae_title == "RADNODE"
    assert settings.dicom.allowed_calling_aes == []
    assert settings.dicom.tls.enabled is False
    assert settings.database.url.startswith("sqlite:///")
    assert settings.broker.url == ""
    assert settings.storage.root == Path("var/storage")
    assert settings.web.port == 8080
    assert settings.assembly.quiet_seconds == 10
    assert settings.assembly.early_stable_single_image is True
    assert settings.assembly.selection.modalities == ["CR", "DX"]
    assert settings.destinations == []


def test_toml_file_named_by_environment_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RADNODE_CONFIG names a TOML file whose sections replace the defaults."""
    config = _write(
        tmp_path / "radnode.toml",
        """
        [dicom]
        port = 11190
        ae_title = "CXRNODE"
        allowed_calling_aes = ["MODALITY1", "PACS"]
        [database]
        url = "postgresql+psycopg://radnode@db/radnode"
        [broker]
        url = "redis://127.0.0.1:6379/0"
        [storage]
        root = "/srv/radnode"
        [assembly]
        quiet_seconds = 5
        [assembly.selection]
        draft_when_view_unknown = true
        [[destinations]]
        ae_title = "PACS"
        host = "pacs.example"
        port = 4242
        """.replace("        ", ""),
    )
    monkeypatch.setenv(CONFIG_ENV_VAR, str(config))
    settings = load_settings()
    assert settings.dicom.port == 11190
    assert settings.dicom.ae_title == "CXRNODE"
    assert settings.dicom.allowed_calling_aes == ["MODALITY1", "PACS"]
    assert settings.database.url == "postgresql+psycopg://radnode@db/radnode"
    assert settings.broker.url == "redis://127.0.0.1:6379/0"
    assert settings.storage.root == Path("/srv/radnode")
    assert settings.assembly.quiet_seconds == 5
    assert settings.assembly.selection.draft_when_view_unknown is True
    assert settings.assembly.early_stable_single_image is True  # untouched default
    assert [(d.ae_title, d.host, d.port) for d in settings.destinations] == [
        ("PACS", "pacs.example", 4242)
    ]


def test_environment_overrides_file_key_by_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RADNODE_DICOM__PORT wins over [dicom] port; the file's other [dicom] keys survive."""
    config = _write(tmp_path / "radnode.toml", '[dicom]\nport = 11190\nae_title = "CXRNODE"\n')
    monkeypatch.setenv(CONFIG_ENV_VAR, str(config))
    monkeypatch.setenv("RADNODE_DICOM__PORT", "11200")
    monkeypatch.setenv("RADNODE_ASSEMBLY__SELECTION__MODALITIES", '["DX"]')
    settings = load_settings()
    assert settings.dicom.port == 11200
    assert settings.dicom.ae_title == "CXRNODE"
    assert settings.assembly.selection.modalities == ["DX"]


def test_explicit_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values passed to load_settings beat the environment (embedded runs, tests)."""
    monkeypatch.setenv("RADNODE_DICOM__PORT", "11200")
    assert load_settings(dicom={"port": 11300}).dicom.port == 11300


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("RADNODE_DICOM__PORT", "not-a-number", "dicom.port"),
        ("RADNODE_DICOM__PORT", "70000", "dicom.port"),
        ("RADNODE_STORAGE__MIN_FREE_MB", "-1", "storage.min_free_mb"),
        ("RADNODE_ASSEMBLY__QUIET_SECONDS", "-5", "assembly.quiet_seconds"),
        ("RADNODE_LOGGING__LEVEL", "CHATTY", "logging.level"),
        ("RADNODE_REPORTS__LANGUAGE", "klingon", "reports.language"),
        ("RADNODE_REPORTS__LANGUAGE", "de_DE", "reports.language"),
        ("RADNODE_DICOM__NO_SUCH_KEY", "1", "RADNODE_DICOM__NO_SUCH_KEY='1'"),
    ],
)
def test_invalid_environment_value_names_the_key(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, key: str
) -> None:
    """An invalid variable raises ConfigError whose message names the offending key."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert key in str(caught.value)


def test_invalid_file_values_are_all_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every invalid key in the file is reported, not only the first."""
    config = _write(
        tmp_path / "radnode.toml",
        "[dicom]\nport = 99999\n[storage]\nmax_used_percent = 150\n[web]\nport = 0\n",
    )
    monkeypatch.setenv(CONFIG_ENV_VAR, str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    for key in ("dicom.port", "storage.max_used_percent", "web.port"):
        assert key in message


def test_unknown_section_in_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt section in the file is an error, not silently ignored."""
    config = _write(tmp_path / "radnode.toml", "[dicomm]\nport = 11190\n")
    monkeypatch.setenv(CONFIG_ENV_VAR, str(config))
    with pytest.raises(ConfigError, match="dicomm"):
        load_settings()


def test_toml_syntax_error_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that is not TOML raises ConfigError (not a raw parser exception)."""
    config = _write(tmp_path / "radnode.toml", "[dicom\nport = 1\n")
    monkeypatch.setenv(CONFIG_ENV_VAR, str(config))
    with pytest.raises(ConfigError):
        load_settings()


def test_missing_config_file_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RADNODE_CONFIG naming a missing file fails loudly instead of using defaults."""
    missing = tmp_path / "absent.toml"
    monkeypatch.setenv(CONFIG_ENV_VAR, str(missing))
    with pytest.raises(ConfigError, match=CONFIG_ENV_VAR) as caught:
        load_settings()
    assert str(missing) in str(caught.value)


@pytest.mark.parametrize(
    "title",
    ["", "   ", "SEVENTEEN_CHARS_X", "BACK\\SLASH", "TAB\tTITLE", "ÜMLAUT"],
)
def test_invalid_own_ae_title_is_refused(title: str) -> None:
    """The node's AE title must be 1-16 printable ASCII characters without backslash."""
    with pytest.raises(ConfigError, match="dicom.ae_title"):
        load_settings(dicom={"ae_title": title})


def test_invalid_allowed_calling_ae_is_refused() -> None:
    """Each allowed calling AE title is validated like the node's own."""
    with pytest.raises(ConfigError, match="dicom.allowed_calling_aes"):
        load_settings(dicom={"allowed_calling_aes": ["GOOD", "WAY_TOO_LONG_AE_TITLE"]})


def test_invalid_destination_ae_is_refused() -> None:
    """A destination with an invalid AE title is refused with its position named."""
    with pytest.raises(ConfigError, match=r"destinations\.0\.ae_title"):
        load_settings(destinations=[{"ae_title": "A\\B", "host": "h", "port": 104}])


def test_ae_titles_are_trimmed() -> None:
    """Padding spaces are not part of an AE title (DICOM pads AE titles with spaces)."""
    settings = load_settings(dicom={"ae_title": "RADNODE  ", "allowed_calling_aes": [" CR1"]})
    assert settings.dicom.ae_title == "RADNODE"
    assert settings.dicom.allowed_calling_aes == ["CR1"]


def test_port_zero_means_any_free_port() -> None:
    """Port 0 is accepted so that embedded runs and tests can bind a free port."""
    assert load_settings(dicom={"port": 0}).dicom.port == 0


def test_settings_are_immutable() -> None:
    """The settings object is frozen: no module-global mutation at run time."""
    settings = load_settings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        settings.dicom.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(("given", "kept"), [("de-DE", "de-DE"), ("fr-fr", "fr-FR"),
                                              (" en-GB ", "en-GB")])
def test_report_language_is_kept_in_canonical_case(given: str, kept: str) -> None:
    """``[reports] language`` takes a supported RFC 5646 tag, whatever its case."""
    assert load_settings(reports={"language": given}).reports.language == kept
    assert Settings().reports.language == "en-US"


def test_peers_with_permissions_and_the_older_allow_list(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``[[dicom.peers]]`` gives per-AE permissions; ``allowed_calling_aes`` keeps its
    meaning (every permission); with neither the listener is open to any AE."""
    from node.dicom.access import AccessPolicy, Permission

    path = tmp_path / "radnode.toml"
    path.write_text(
        '[dicom]\nallowed_calling_aes = ["OLD_PACS"]\n\n'
        '[[dicom.peers]]\nae_title = "CR_ROOM1"\n\n'
        '[[dicom.peers]]\nae_title = "VIEWER"\nstore = false\nquery = true\n'
        'host = "10.0.0.9"\n')
    monkeypatch.setenv(CONFIG_ENV_VAR, str(path))
    policy = AccessPolicy(load_settings().dicom)
    assert not policy.open
    assert policy.allows("CR_ROOM1", Permission.STORE)
    assert not policy.allows("CR_ROOM1", Permission.QUERY)
    assert policy.allows("VIEWER", Permission.QUERY)
    assert not policy.allows("VIEWER", Permission.STORE)
    assert not policy.allows("VIEWER", Permission.RETRIEVE)
    assert all(policy.allows("OLD_PACS", p) for p in Permission)
    assert policy.refusal("STRANGER", "10.0.0.1", tls=False, certificate_name=None)
    assert policy.refusal("VIEWER", "10.0.0.1", tls=False, certificate_name=None)
    assert policy.refusal("VIEWER", "10.0.0.9", tls=False, certificate_name=None) is None
    assert policy.refusal("CR_ROOM1", "10.0.0.1", tls=True, certificate_name="VIEWER")
    assert AccessPolicy(load_settings(dicom={"allowed_calling_aes": [], "peers": []})
                        .dicom).open


def test_a_peer_named_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="twice"):
        load_settings(dicom={"peers": [{"ae_title": "A"}, {"ae_title": "A "}]})


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("RADNODE_DICOM_PORT", "RADNODE_DICOM__PORT"),
        ("RADNODE_DICOM__PROT", "RADNODE_DICOM__PORT"),
        ("RADNODE_DATABSE__URL", "RADNODE_DATABASE__URL"),
        ("RADNODE_DICOM__TLS_ENABLED", "RADNODE_DICOM__TLS__ENABLED"),
        ("radnode_logging_level", "RADNODE_LOGGING__LEVEL"),
    ],
)
def test_misspelled_variable_is_refused_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, suggestion: str
) -> None:
    """A variable that looks like a setting but sets nothing is refused, never ignored."""
    monkeypatch.setenv(variable, "11190")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"{variable}='11190'" in message
    assert f"did you mean {suggestion}?" in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RADNODE_ORT_PROVIDERS", "CPUExecutionProvider"),  # read by the encoder runtime
        ("RADNODE_DICOM_SERVICE_HOST", "10.0.0.7"),  # Kubernetes service link
        ("RADNODE_DICOM_PORT", "tcp://10.0.0.7:11112"),  # Kubernetes service link
        ("RADNODE_WEB_PORT_8080_TCP_ADDR", "10.0.0.8"),
        ("RADNODE_BUILD_ID", "42"),  # nothing like a setting
    ],
)
def test_variables_that_are_no_setting_are_left_alone(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert load_settings().dicom.port == 11112


def test_unknown_file_key_suggests_the_closest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write(tmp_path / "radnode.toml", "[dicom]\nprot = 104\n[exports]\nbase_delay = 5\n")
    monkeypatch.setenv(CONFIG_ENV_VAR, str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "dicom.prot: Extra inputs are not permitted (did you mean dicom.port?)" in str(
        caught.value)
    assert "(did you mean exports.base_delay_seconds?)" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://radnode:s3cr@t@db:5432/radnode",
         "postgresql+psycopg://radnode:***@db:5432/radnode"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://user:pw@[::1]:6379/0", "redis://user:***@[::1]:6379/0"),
        ("postgresql+psycopg://radnode@/radnode?host=/var/run/postgresql",
         "postgresql+psycopg://radnode@/radnode?host=/var/run/postgresql"),
        ("sqlite:///var/radnode.db", "sqlite:///var/radnode.db"),
    ],
)
def test_masked_url_hides_only_the_password(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_cors_origins_are_empty_by_default_and_must_be_exact_origins() -> None:
    assert load_settings().web.cors_origins == []
    allowed = ["https://viewer.example", "http://127.0.0.1:3000"]
    assert load_settings(web={"cors_origins": allowed}).web.cors_origins == allowed
    for bad in ("*", "null", "https://viewer.example/", "https://viewer.example/ohif",
                "ftp://viewer.example", "https://Viewer.example", "viewer.example",
                "https://user@viewer.example"):
        with pytest.raises(ConfigError, match="cors_origins"):
            load_settings(web={"cors_origins": [bad]})


def test_destinations_receive_finals_only_unless_they_ask_for_drafts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from node.cli.startup import destination_lines
    from node.config import DestinationExports

    config = _write(tmp_path / "radnode.toml", """
[[destinations]]
ae_title = "PACS"
host = "10.0.0.5"
port = 104

[[destinations]]
ae_title = "REVIEW"
host = "10.0.0.6"
port = 104
exports = "drafts_and_finals"
storage_commitment = true
""")
    monkeypatch.setenv(CONFIG_ENV_VAR, str(config))
    pacs, review = load_settings().destinations
    assert (pacs.exports, pacs.exports_by_default, pacs.storage_commitment) == (
        DestinationExports.FINALS_ONLY, True, False)
    assert (review.exports, review.exports_by_default, review.storage_commitment) == (
        DestinationExports.DRAFTS_AND_FINALS, False, True)
    assert destination_lines(load_settings()) == [
        '  export:   PACS at 10.0.0.5:104: signed reports only (exports not set; before this '
        'setting drafts went to every destination: set exports = "drafts_and_finals" to '
        'keep that)',
        "  export:   REVIEW at 10.0.0.6:104: drafts and signed reports, storage commitment",
    ]
    _write(config, '[[destinations]]\nae_title = "PACS"\nhost = "h"\nport = 104\n'
                   'exports = "all"\n')
    with pytest.raises(ConfigError, match=r"destinations\.0\.exports"):
        load_settings()
