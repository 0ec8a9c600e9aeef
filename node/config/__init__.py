"""Typed settings for every radnode process.

Settings come from three layers, later ones winning:

1. embedded defaults (SQLite, a local storage folder, an in-process queue);
2. a TOML file named by the ``RADNODE_CONFIG`` environment variable;
3. environment variables ``RADNODE_<SECTION>__<KEY>``, e.g. ``RADNODE_DICOM__PORT=11190``.

Values are validated when loaded; an invalid file or variable raises
:class:`ConfigError` naming the offending key.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from node.config.base import AE_TITLE_PATTERN, ConfigError, Section, check_ae_title
from node.config.dicom import (
    DatasetLimitSettings,
    Destination,
    DestinationExports,
    DicomPeer,
    DicomSettings,
    ExportSettings,
    TlsSettings,
)

CONFIG_ENV_VAR = "RADNODE_CONFIG"
ENV_PREFIX = "RADNODE_"

#: ``RADNODE_*`` variables that are not settings: read elsewhere, never refused.
OTHER_VARIABLES = frozenset({
    CONFIG_ENV_VAR,
    "RADNODE_DB_PASSWORD",  # the compose file's own interpolation variable
    "RADNODE_ORT_PROVIDERS",  # ONNX Runtime execution providers of the encoder
    "RADNODE_TRT_CACHE",  # TensorRT engine cache folder
    "RADNODE_TEST_POSTGRES_URL",  # the test suite's PostgreSQL server
    "RADNODE_UPDATE_SCREENSHOTS",  # the browser tests rewrite docs/screenshots
})

class DatabaseSettings(Section):
    """The SQL database: SQLite file (embedded) or PostgreSQL (production)."""

    url: str = "sqlite:///var/radnode.db"
    echo: bool = False
    migrate_on_start: bool = True


class BrokerSettings(Section):
    """Where work is queued: empty for the embedded queue, or a ``redis://`` URL."""

    url: str = ""
    visibility_timeout_seconds: int = Field(4 * 3600, gt=0)
    """Redis redelivers an unacknowledged task after this long; it must exceed the
    longest queue wait plus run time (the reconciler covers lost workers sooner)."""
    draft_queue: str = "draft"
    health_timeout_seconds: float = Field(1.0, gt=0)
    """How long the monitoring page and ``/metrics`` wait for the broker to answer."""
    health_cache_seconds: float = Field(5.0, ge=0)
    """The broker's health is asked at most this often; pages in between reuse it."""


class JobSettings(Section):
    """Drafting job lifecycle: attempts, back-off and leases."""

    max_attempts: int = Field(3, ge=1)
    retry_backoff_seconds: float = Field(15.0, ge=0)
    retry_backoff_max_seconds: float = Field(600.0, ge=0)
    lease_seconds: float = Field(600.0, gt=0)
    """The lease of a job claimed by a process without a heartbeat; a worker with one
    holds its jobs for ``[worker] lost_after_seconds``, renewed at each beat. A RUNNING
    job whose lease has expired is taken to be lost with its worker."""
    requeue_after_seconds: float = Field(900.0, gt=0)
    """A QUEUED job untouched this long is enqueued again. A backstop only: when the
    broker answers again after an outage or a restart, every waiting job is enqueued
    again at once."""
    reconcile_seconds: float = Field(5.0, gt=0)
    """Time between reconciler passes (expired leases, broker check, STABLE studies)."""
    delayed_after_seconds: float = Field(300.0, gt=0)
    """Triage lists jobs waiting or running longer than this as delayed."""


class InstanceSource(enum.Enum):
    """Where a drafting worker reads a study's instances from."""

    SHARED = "shared"
    """The storage folder, shared with the node."""
    HTTP = "http"
    """The node's WADO-RS service, with the worker's bearer token."""


class DecodeEngineMode(enum.Enum):
    """Whether a drafting worker generates through the batching decode engine."""

    AUTO = "auto"
    """On a GPU; ``model.generate`` on a CPU."""
    ON = "on"
    """Always (the same code path on a CPU, slower there)."""
    OFF = "off"
    """Always ``model.generate`` (one draft's rows batched, no sharing across drafts)."""


class WorkerSettings(Section):
    """The drafting worker process (one per GPU)."""

    concurrency: int = Field(4, ge=1)
    """Draft tasks a worker runs at once; they share one loaded model, and with the decode
    engine one batch: this is the engine's number of slots."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda:N``."""
    decode_engine: DecodeEngineMode = DecodeEngineMode.AUTO
    """``auto``: the continuous-batching decode engine on a GPU; ``on``; ``off``."""
    instance_source: InstanceSource = InstanceSource.SHARED
    """``shared``: read instances from ``storage.root`` (the node's folder, shared with
    other hosts); ``http``: fetch them from the node over WADO-RS into a temporary
    folder per job (``node_url`` and a token needed)."""
    node_url: str = ""
    """The node's web address, e.g. ``https://radnode.example.org:8080``."""
    token: SecretStr | None = None
    """Bearer token of the worker's service account (``radnode user token NAME``)."""
    token_file: Path | None = None
    """A file holding the token instead (read at start)."""
    ca_file: Path | None = None
    """CA certificates that sign the node's HTTPS certificate (system ones when unset)."""
    fetch_timeout_seconds: float = Field(60.0, gt=0)
    fetch_attempts: int = Field(3, ge=1)
    """Tries per instance on connection errors before the job attempt fails (and retries)."""
    scratch_dir: Path | None = None
    """Where the per-job folders of fetched instances go (the system's temp folder)."""
    heartbeat_seconds: float = Field(10.0, gt=0)
    """How often a worker process writes its heartbeat row and renews its jobs' leases."""
    lost_after_seconds: float = Field(30.0, gt=0)
    """The lease of a job held by a beating worker: a worker silent this long (killed,
    frozen, cut off) loses its jobs to the others. At least twice ``heartbeat_seconds``."""
    stale_after_seconds: float = Field(60.0, gt=0)
    """A worker with no beat for this long is shown as stale."""

    @model_validator(mode="before")
    @classmethod
    def _earlier_shared_storage_key(cls, data: object) -> object:
        """Read ``shared_storage = true`` of earlier configuration files as the default
        source; ``false`` names no source, so it is refused with what to write instead."""
        if isinstance(data, dict) and "shared_storage" in data:
            data = dict(data)
            if data.pop("shared_storage") not in (True, "true", "True", "1", 1):
                raise ValueError('shared_storage = false is replaced by instance_source = '
                                 '"http" (with node_url and a token)')
        return data

    @field_validator("node_url")
    @classmethod
    def _check_node_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", value):
            raise ValueError(f"node_url {value!r} must be an http:// or https:// address")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_lost_after(self) -> WorkerSettings:
        if self.lost_after_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(f"lost_after_seconds ({self.lost_after_seconds:g}) must be at "
                             f"least twice heartbeat_seconds ({self.heartbeat_seconds:g})")
        return self

    @model_validator(mode="after")
    def _check_http_source(self) -> WorkerSettings:
        if self.instance_source is InstanceSource.HTTP:
            if not self.node_url:
                raise ValueError("instance_source = \"http\" needs node_url")
            if self.token is None and self.token_file is None:
                raise ValueError("instance_source = \"http\" needs token or token_file")
        return self

    def bearer_token(self) -> str:
        """The service token, from ``token`` or ``token_file``.

        Raises
        ------
        ConfigError
            When neither is set, or the file cannot be read or is empty.
        """
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is None:
            raise ConfigError("[worker] needs token or token_file")
        try:
            value = self.token_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"[worker] token_file {self.token_file}: {exc}") from exc
        if not value:
            raise ConfigError(f"[worker] token_file {self.token_file} is empty")
        return value


class StorageSettings(Section):
    """Where received instances live and when to refuse new ones."""

    root: Path = Path("var/storage")
    min_free_mb: int = Field(2048, ge=0)
    max_used_percent: float = Field(95.0, gt=0, le=100)


class WebSettings(Section):
    """The web application: where it listens, its login cookie and login throttling."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    secret_key: SecretStr | None = None
    """Signs login cookies and CSRF tokens. When unset, the key is read from
    ``secret_key_file``, which is generated (mode 0600) on first start."""
    secret_key_file: Path = Path("var/web-secret.key")
    secure_cookies: bool = False
    """Mark cookies ``Secure``: set it when browsers reach the node over HTTPS
    (e.g. through a TLS-terminating proxy)."""
    session_idle_minutes: float = Field(30.0, gt=0)
    """A login ends after this long without a request."""
    session_max_hours: float = Field(12.0, gt=0)
    """A login ends this long after it began, active or not."""
    login_max_failures: int = Field(5, ge=1)
    """Failed logins allowed per username and client address within the window."""
    login_window_seconds: float = Field(300.0, gt=0)
    """Length of a throttle window; it starts at a key's first attempt."""
    login_max_failures_per_address: int = Field(100, ge=1)
    """Failed logins allowed per client address within the window, whatever the usernames
    (bounds what a flood with random usernames can cost and store). Behind a proxy every
    client shares its address: raise it there."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins of viewers served from another site that may call ``/dicomweb`` (WADO-URI
    included) from a browser, e.g. ``["https://viewer.example"]``. Empty: no CORS
    headers, so browsers allow only pages of this node. Each entry is an exact origin
    (scheme, host, optional port); ``*`` is refused. Cross-origin callers authenticate
    with a personal bearer token: the login cookie never travels cross-site."""
    token_max_days: int = Field(90, ge=1, le=3650)
    """The longest lifetime a personal bearer token may be issued with (each one
    must expire)."""
    stow_max_request_mb: int = Field(2048, ge=1)
    """Largest STOW-RS request body in MiB (413 beyond; nothing of it is stored)."""
    stow_max_instance_mb: int = Field(512, ge=1)
    """Largest instance in a STOW-RS request, in MiB (that instance fails with 0xA700)."""

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, values: list[str]) -> list[str]:
        checked = []
        for value in values:
            parts = urlsplit(value)
            if value == "*" or value == "null":
                raise ValueError(f"{value!r} is not allowed: name each viewer's origin")
            if (parts.scheme not in ("http", "https") or not parts.hostname
                    or parts.path or parts.query or parts.fragment or parts.username
                    or parts.password or value != f"{parts.scheme}://{parts.netloc}"):
                raise ValueError(f"invalid origin {value!r}: scheme://host[:port], "
                                 "lower case, without a path or a trailing slash")
            if parts.netloc != parts.netloc.lower():
                raise ValueError(f"invalid origin {value!r}: write the host in lower case")
            checked.append(value)
        return checked

    autosave_seconds: float = Field(2.0, gt=0)
    """The study page saves the text being edited this long after the last keystroke."""
    presence_heartbeat_seconds: float = Field(15.0, gt=0)
    """How often an open study page tells the node that its user is reading the study."""
    presence_expiry_seconds: float = Field(45.0, gt=0)
    """A reader without a heartbeat for this long no longer counts as having it open."""
    confirm_unedited_urgent: bool = True
    """Ask for a confirmation before signing an unedited draft of an urgent study."""
    ohif_dist: Path = Path("var/ohif/dist")
    """The OHIF Viewer served at ``/viewer/``: the ``dist`` folder of the npm package
    ``@ohif/app`` (``make ohif`` installs the pinned version there). Without it the viewer
    is off: ``/viewer/`` answers 404 and the study page shows no link to it."""
    live_poll_seconds: float = Field(1.0, gt=0, le=60)
    """How often an open worklist's live stream looks for changed rows."""
    live_streams_per_user: int = Field(4, ge=1, le=100)
    """Live worklist streams one user may hold at once (more answer 429: the page polls)."""
    live_stream_max_seconds: float = Field(300.0, gt=0)
    """A live stream ends after this long; the browser reconnects (and is authenticated
    again)."""
    live_login_check_seconds: float = Field(5.0, gt=0)
    """How often an open live stream checks that its login is still valid."""


class SelectionSettings(Section):
    """Which studies are chest radiographs to draft."""

    modalities: list[str] = Field(default_factory=lambda: ["CR", "DX"])
    body_parts: list[str] = Field(default_factory=lambda: ["CHEST", "THORAX"])
    allow_missing_body_part: bool = True
    frontal_views: list[str] = Field(default_factory=lambda: ["PA", "AP"])
    draft_when_view_unknown: bool = False


class ReportsSettings(Section):
    """How the node's SRs are written."""

    language: str = "en-US"
    """RFC 5646 tag declared as the SRs' Language of Content Item and Descendants."""

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str) -> str:
        from node.reports.sr_language import language_code

        return language_code(value).value


class AssemblySettings(Section):
    """When a study counts as complete."""

    quiet_seconds: float = Field(10.0, ge=0)
    early_stable_single_image: bool = True
    early_stable_after_seconds: float = Field(2.0, ge=0)
    """A single CR/DX image is complete once it has been alone this long: time for the next
    image of a study still being sent (in the same association) to arrive."""
    poll_seconds: float = Field(0.5, gt=0)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)


class ModelSettings(Section):
    """The model bundle the workers load, and the site's sampling choices.

    Unset values keep the bundle's own generation defaults (LLaVA-Rad: greedy;
    CXR-LLaVA: temperature 0.2, top_p 0.8).
    """

    bundle: Path = Path("var/models/demo")
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_new_tokens: int | None = Field(None, gt=0)
    seed: int = 0
    """Sampling seed: the same study, model and seed give the same draft."""

    def generation_overrides(self) -> dict[str, float | int]:
        """The generation values the site set, by GenerationSpec field name."""
        values = {"temperature": self.temperature, "top_p": self.top_p,
                  "max_new_tokens": self.max_new_tokens}
        return {key: value for key, value in values.items() if value is not None}


class RetentionSettings(Section):
    """Clean-up of received images once their study's report is signed and delivered.

    Only image files go; report SRs, database rows and the audit trail stay. A study's
    images are removed ``keep_images_days`` after its final report was signed and every
    export of that report was delivered, and never while a drafting job is pending.
    """

    enabled: bool = False
    keep_images_days: float = Field(30.0, ge=0)
    period_seconds: float = Field(3600.0, gt=0)
    """How often the node looks for studies due for clean-up."""
    batch_size: int = Field(100, ge=1)
    """Studies cleaned up per pass at most."""


class QualitySettings(Section):
    """Draft labelling, urgent flags and the live agreement between drafts and signed reports.

    Agreement of an observation is measured over the reports signed in the last
    ``agreement_window_days`` days, per model version; it alerts (a warning log event and
    ``radnode_observation_agreement_alert``) when at least ``agreement_min_reports`` reports
    were signed in the window and agreement is below ``agreement_threshold``.
    """

    urgent_observations: list[str] = Field(default_factory=lambda: ["Pneumothorax"])
    """CheXpert observations that flag the study urgent when a draft labels them positive
    (flag e.g. ``"pneumothorax"``)."""
    urgent_uncertain: bool = False
    """Also flag an urgent observation the draft is uncertain about (``"possible
    pneumothorax"``); off by default, since hedged mentions ("cannot exclude a small
    pneumothorax") are mostly absent and would crowd the worklist."""
    labeler_rules_dir: Path | None = None
    """A site's folder of labeler rule files (``*.toml``) that add to, or replace lists of,
    the shipped phrase tables (``workers/evaluation/rules``); see docs/evaluation.md."""
    agreement_window_days: float = Field(30.0, gt=0)
    agreement_threshold: float = Field(0.8, ge=0, le=1)
    agreement_min_reports: int = Field(20, ge=1)
    chart_days: int = Field(30, ge=2, le=365)
    """Days of daily agreement shown on the monitoring page."""

    @field_validator("labeler_rules_dir")
    @classmethod
    def _check_rules_dir(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        from workers.evaluation.labeler_rules import RulesError, site_rules

        try:
            site_rules(value.resolve())
        except RulesError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("urgent_observations")
    @classmethod
    def _check_observations(cls, values: list[str]) -> list[str]:
        from node.observations import Observation

        known = {o.value.lower().replace("_", " ").replace("-", " "): o.value
                 for o in Observation}
        resolved: list[str] = []
        for value in values:
            name = known.get(value.strip().lower().replace("_", " ").replace("-", " "))
            if name is None:
                raise ValueError(f"unknown observation {value!r}; valid: "
                                 + ", ".join(o.value for o in Observation))
            if name not in resolved:
                resolved.append(name)
        return resolved


class EvaluationSettings(Section):
    """Offline evaluation (``radnode eval``): the optional CheXprompt judge.

    CheXprompt asks a large language model served behind an OpenAI-compatible
    ``/chat/completions`` endpoint to count report errors; it runs only when
    ``chexprompt_url`` is set (e.g. ``http://llm.hospital.local:8000/v1``).
    """

    chexprompt_url: str = ""
    """Base URL of the chat endpoint (``…/v1``); empty: CheXprompt off."""
    chexprompt_model: str = ""
    """Model name sent with each request."""
    chexprompt_api_key_env: str = ""
    """Name of the environment variable holding the API key (none sent when empty)."""
    chexprompt_timeout_s: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _model_named_when_enabled(self) -> EvaluationSettings:
        if self.chexprompt_url and not self.chexprompt_model:
            raise ValueError("chexprompt_model must be set when chexprompt_url is")
        if self.chexprompt_url and not self.chexprompt_url.startswith(("http://", "https://")):
            raise ValueError("chexprompt_url must start with http:// or https://")
        return self


class AlertSettings(Section):
    """When waiting work raises an alert: a warning log event when it starts and ends, and
    ``radnode_alert{name=...}`` at 1 in ``/metrics`` while it lasts (also on the monitoring
    page)."""

    job_wait_seconds: float = Field(1800.0, gt=0)
    """The oldest queued or retrying drafting job has waited longer than this."""
    export_wait_seconds: float = Field(3600.0, gt=0)
    """The oldest undelivered export has waited longer than this."""
    check_seconds: float = Field(30.0, gt=0)
    """How often ``radnode serve`` evaluates the alerts (as well as on each scrape)."""


class LoggingSettings(Section):
    """Log level and format (structured JSON or plain text)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Settings(BaseSettings):
    """Every setting of a radnode process, one typed object."""

    model_config = SettingsConfigDict(
        env_prefix="RADNODE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    dicom: DicomSettings = Field(default_factory=DicomSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    assembly: AssemblySettings = Field(default_factory=AssemblySettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    destinations: list[Destination] = Field(default_factory=list)
    exports: ExportSettings = Field(default_factory=ExportSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    reports: ReportsSettings = Field(default_factory=ReportsSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_path = os.environ.get(CONFIG_ENV_VAR)
        if config_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_path)))
        return tuple(sources)


def _setting_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every settable path of ``model``: sections, their keys and nested sections."""
    paths: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        paths.append(path)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(_setting_paths(annotation, path))
    return paths


def setting_variable_names() -> list[str]:
    """Every environment variable name that sets something, e.g. ``RADNODE_DICOM__PORT``."""
    return [ENV_PREFIX + "__".join(path).upper() for path in _setting_paths(Settings)]


#: Variables Kubernetes sets for a Service named ``radnode-…`` (service links), e.g.
#: ``RADNODE_DICOM_SERVICE_HOST`` or ``RADNODE_DICOM_PORT=tcp://10.0.0.7:11112``.
_SERVICE_LINK_NAME = re.compile(
    r"^RADNODE_\w+?_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_\w+)?)$")
_SERVICE_LINK_VALUE = re.compile(r"^(tcp|udp|sctp)://")


def _closest(name: str, candidates: list[str], cutoff: float = 0.6) -> str | None:
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=cutoff)
    return found[0] if found else None


def check_environment(environ: dict[str, str] | None = None) -> None:
    """Refuse ``RADNODE_*`` variables that look like a setting but name none.

    A variable looks like a setting when it uses the ``__`` delimiter, when its first
    word is (close to) a section name, or when it is close to a valid name; such a
    variable would otherwise be ignored without a word (``RADNODE_DICOM_PORT``).

    Raises
    ------
    ConfigError
        Naming the variable, its value and the closest valid name.
    """
    environ = dict(os.environ) if environ is None else environ
    valid = setting_variable_names()
    valid_set = set(valid)
    sections = [name.upper() for name in Settings.model_fields]
    for key in sorted(environ):
        name = key.upper()
        if not name.startswith(ENV_PREFIX) or name in valid_set or name in OTHER_VARIABLES:
            continue
        if _SERVICE_LINK_NAME.match(name) or _SERVICE_LINK_VALUE.match(environ[key]):
            continue
        rest = name[len(ENV_PREFIX):]
        first_word = re.split(r"_+", rest, maxsplit=1)[0]
        flat = {re.sub(r"_+", "_", v): v for v in valid}
        near = _closest(re.sub(r"_+", "_", name), list(flat), cutoff=0.8)
        suggestion = flat[near] if near is not None else None
        looks_like_setting = ("__" in rest or _closest(first_word, sections) is not None
                              or suggestion is not None)
        if not looks_like_setting:
            continue
        hint = f"; did you mean {suggestion}?" if suggestion else (
            "; settings are named RADNODE_<SECTION>__<KEY>, e.g. RADNODE_DICOM__PORT")
        raise ConfigError(f"environment variable {key}={environ[key]!r} matches no "
                          f"setting{hint}")


def _extra_key_hint(loc: tuple[str | int, ...]) -> str:
    """``; did you mean dicom.port?`` for an unknown key close to a valid one."""
    wanted = tuple(str(part) for part in loc if not isinstance(part, int))
    siblings = [path for path in _setting_paths(Settings) if path[:-1] == wanted[:-1]]
    match = _closest(wanted[-1], [path[-1] for path in siblings]) if wanted else None
    return f" (did you mean {'.'.join((*wanted[:-1], match))}?)" if match else ""


def masked_url(url: str) -> str:
    """``url`` with its password shown as ``***`` (database and broker URLs)."""
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:
        return url
    if password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{parts.username or ''}:***@{host}" + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def config_source() -> str:
    """Where the settings come from: the absolute path of the TOML file, or the
    embedded defaults (environment variables apply over either)."""
    config_path = os.environ.get(CONFIG_ENV_VAR)
    if config_path:
        return str(Path(config_path).resolve())
    return "built-in defaults (RADNODE_CONFIG not set)"


def load_settings(**overrides: object) -> Settings:
    """Load and validate the settings.

    Parameters
    ----------
    **overrides
        Section values that win over the file and the environment
        (used by tests and embedded runs), e.g. ``dicom={"port": 0}``.

    Returns
    -------
    Settings
        The validated settings.

    Raises
    ------
    ConfigError
        When the file is missing or unreadable, or a value is invalid; the
        message names every offending key.
    """
    config_path = os.environ.get(CONFIG_ENV_VAR)
    if config_path and not Path(config_path).is_file():
        raise ConfigError(f"{CONFIG_ENV_VAR} names {config_path!r}, which is not a readable file")
    check_environment()
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            + (_extra_key_hint(err["loc"]) if err["type"] == "extra_forbidden" else "")
            for err in exc.errors()
        )
        raise ConfigError(f"invalid radnode configuration: {problems}") from exc
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"invalid radnode configuration: {exc}") from exc


__all__ = [
    "AE_TITLE_PATTERN",
    "AlertSettings",
    "AssemblySettings",
    "BrokerSettings",
    "CONFIG_ENV_VAR",
    "ConfigError",
    "DatabaseSettings",
    "DatasetLimitSettings",
    "DecodeEngineMode",
    "Destination",
    "DestinationExports",
    "DicomPeer",
    "DicomSettings",
    "ENV_PREFIX",
    "EvaluationSettings",
    "ExportSettings",
    "InstanceSource",
    "JobSettings",
    "LoggingSettings",
    "ModelSettings",
    "OTHER_VARIABLES",
    "QualitySettings",
    "ReportsSettings",
    "RetentionSettings",
    "Section",
    "SelectionSettings",
    "Settings",
    "StorageSettings",
    "TlsSettings",
    "WebSettings",
    "WorkerSettings",
    "check_ae_title",
    "check_environment",
    "config_source",
    "load_settings",
    "masked_url",
    "setting_variable_names",
]
