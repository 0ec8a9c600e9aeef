"""The OHIF Viewer at ``/viewer/``: served under the node's login, rewritten for its sub-path,
configured for the node's DICOMweb, with its own Content Security Policy.

The dist here is a small stand-in shaped like ``@ohif/app``'s (absolute references, inline
scripts, the bundler's public path); the real dist runs in ``tests/browser/test_ohif.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.states import StudyState
from node.web.ohif import MOUNT, NOT_INSTALLED, content_security_policy, mount_index_html
from tests.integration.web_seed import (
    HTML,
    WebEnv,
    audit_events,
    build_web_env,
    seed_drafted_study,
    seed_study,
    seed_user,
)

pytestmark = pytest.mark.usefixtures("fast_hashing")

INDEX = (
    '<!doctype html><html><head><script>console.time("scriptToView"),window.PUBLIC_URL="/"'
    '</script><link rel="manifest" href="/manifest.json"><link rel="icon" '
    'href="/assets/favicon.ico"><script rel="preload" as="script" src="/app-config.js">'
    '</script><script>function browserImportFunction(n){return import(n)}'
    'window.PUBLIC_URL="/"</script><script defer src="/app.bundle.0f6159c501addfe9.js">'
    '</script><link href="/app.bundle.css" rel="stylesheet"><a href="//cdn.example/x">x</a>'
    '</head><body><div id="root"></div></body></html>'
)
BUNDLE = (b'// webpack/runtime/public_path\n(() => {\n__webpack_require__.p = "/";\n})();\n'
          b"console.log('app');\n")
WORKER = b"self.onmessage = () => {};\n"
CSS = b"@font-face{src:url(/a34f9d1faa5f3315.woff2)}body{background:url('/assets/x.png')}"


def write_dist(folder: Path) -> Path:
    """A stand-in for ``@ohif/app``'s dist."""
    folder.mkdir(parents=True)
    (folder / "index.html").write_text(INDEX, encoding="utf-8")
    (folder / "app.bundle.0f6159c501addfe9.js").write_bytes(BUNDLE)
    (folder / "histogram-worker.bundle.ec5f0cf05ce3909c.js").write_bytes(WORKER)
    (folder / "app.bundle.css").write_bytes(CSS)
    (folder / "5130ccb17e3f3f5b.wasm").write_bytes(b"\0asm\1\0\0\0")
    (folder / "app-config.js").write_text("window.config = {public: 'demo'};", encoding="utf-8")
    (folder / ".radnode-ohif").write_text("@ohif/app@3.13.2 sha512-x\n", encoding="utf-8")
    (folder / "assets").mkdir()
    (folder / "assets" / "favicon.ico").write_bytes(b"icon")
    return folder


@pytest.fixture
def web(tmp_path: Path, database_url: str) -> Iterator[WebEnv]:
    dist = write_dist(tmp_path / "ohif" / "dist")
    env = build_web_env(tmp_path, database_url, web={
        "secret_key_file": str(tmp_path / "web-secret.key"), "ohif_dist": str(dist)})
    yield env
    env.close()


@pytest.fixture
def bare(tmp_path: Path, database_url: str) -> Iterator[WebEnv]:
    """A node whose viewer is not installed."""
    env = build_web_env(tmp_path, database_url, web={
        "secret_key_file": str(tmp_path / "web-secret.key"),
        "ohif_dist": str(tmp_path / "nowhere" / "dist")})
    yield env
    env.close()


def _script_src(csp: str) -> list[str]:
    directive = next(d.strip() for d in csp.split(";") if d.strip().startswith("script-src"))
    return directive.split()[1:]


def test_viewer_pages_need_the_login_and_come_back(web: WebEnv) -> None:
    """A browser without a login goes to the login page with the viewer route to return to;
    an API client gets 401."""
    target = "/viewer/viewer?StudyInstanceUIDs=1.2.3"
    response = web.client.get(target, headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == (
        "/login?next=%2Fviewer%2Fviewer%3FStudyInstanceUIDs%3D1.2.3")
    assert web.client.get("/viewer/", headers={"Accept": "application/json"}).status_code == 401
    seed_user(web.database, "hgreg")
    web.login("hgreg")
    assert web.client.get(target, headers=HTML).status_code == 200


def test_index_is_rewritten_for_the_sub_path_with_hashes_of_its_inline_scripts(
    web: WebEnv,
) -> None:
    """Every root-relative reference points under /viewer/, the public URL too; the CSP
    allows exactly the page's inline scripts and nothing from another origin."""
    seed_user(web.database, "hgreg")
    web.login("hgreg")
    response = web.client.get("/viewer/", headers=HTML)
    assert response.status_code == 200
    html = response.text
    assert html.count('window.PUBLIC_URL="/viewer/"') == 2
    assert 'src="/viewer/app.bundle.0f6159c501addfe9.js"' in html
    assert 'src="/viewer/app-config.js"' in html
    assert 'href="/viewer/app.bundle.css"' in html
    assert 'href="//cdn.example/x"' in html  # not root-relative: left alone
    assert not re.search(r'(src|href)="/(?!viewer/|/)', html)
    assert response.headers["cache-control"] == "no-store"
    csp = response.headers["content-security-policy"]
    inline = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    assert len(inline) == 2
    expected = {"'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
                + "'" for body in inline}
    sources = _script_src(csp)
    assert expected <= set(sources)
    assert "'unsafe-inline'" not in sources and "'unsafe-eval'" not in sources
    assert not [s for s in csp.replace(";", " ").split() if "://" in s or s.endswith(":")
                and s not in ("data:", "blob:")]
    assert "frame-ancestors 'none'" in csp
    # OHIF's client-side routes answer the same page.
    for route in ("/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/viewer/dicomweb",
                  "/viewer/index.html"):
        assert web.client.get(route, headers=HTML).text == html


def test_bundles_load_their_chunks_from_the_sub_path(web: WebEnv) -> None:
    """The bundler's public path and style-sheet URLs are rewritten; other files are served
    as they are, hashed names cached for good, the rest revalidated."""
    bundle = web.client.get("/viewer/app.bundle.0f6159c501addfe9.js")
    assert bundle.status_code == 200
    assert b'__webpack_require__.p = "/viewer/";' in bundle.content
    assert b'__webpack_require__.p = "/";' not in bundle.content
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert "immutable" in bundle.headers["cache-control"]
    again = web.client.get("/viewer/app.bundle.0f6159c501addfe9.js",
                           headers={"If-None-Match": bundle.headers["etag"]})
    assert again.status_code == 304
    assert bundle.headers["content-encoding"] == "gzip"  # the client asked for it
    plain = web.client.get("/viewer/app.bundle.0f6159c501addfe9.js",
                           headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.content == bundle.content
    assert plain.headers["etag"] != bundle.headers["etag"]
    assert plain.headers["vary"] == "Accept-Encoding"
    worker = web.client.get("/viewer/histogram-worker.bundle.ec5f0cf05ce3909c.js")
    assert worker.content == WORKER
    assert web.client.get("/viewer/histogram-worker.bundle.ec5f0cf05ce3909c.js", headers={
        "Accept-Encoding": "identity"}).content == WORKER
    css = web.client.get("/viewer/app.bundle.css")
    assert css.content == (b"@font-face{src:url(/viewer/a34f9d1faa5f3315.woff2)}"
                           b"body{background:url('/viewer/assets/x.png')}")
    assert css.headers["cache-control"] == "no-cache"
    wasm = web.client.get("/viewer/5130ccb17e3f3f5b.wasm")
    assert wasm.content == b"\0asm\1\0\0\0"
    assert wasm.headers["content-type"] == "application/wasm"
    assert "immutable" in wasm.headers["cache-control"]
    assert web.client.get("/viewer/assets/favicon.ico").content == b"icon"
    # A script's policy is a worker's (string evaluation for the codecs' glue); the page's
    # never allows it.
    for response in (bundle, worker):
        assert response.headers["content-security-policy"] == content_security_policy(
            worker=True)
        assert "'unsafe-eval'" in _script_src(response.headers["content-security-policy"])
    for response in (css, wasm):
        assert response.headers["content-security-policy"] == content_security_policy()
        assert "'unsafe-eval'" not in response.headers["content-security-policy"]


def test_files_outside_the_dist_and_missing_files_are_not_served(web: WebEnv) -> None:
    """No traversal out of the dist, no dot files, and a missing asset is a 404 (not the
    page, which would hide the fault behind a script error)."""
    seed_user(web.database, "hgreg")
    web.login("hgreg")
    secret = (web.settings.web.secret_key_file).read_text()
    for path in ("/viewer/..%2Fweb-secret.key", "/viewer/%2e%2e/%2e%2e/web-secret.key",
                 "/viewer/.radnode-ohif", "/viewer/missing.bundle.js", "/viewer/assets/nope.png"):
        response = web.client.get(path, headers=HTML)
        assert response.status_code == 404, path
        assert secret not in response.text


def test_app_config_points_at_the_node_dicomweb(web: WebEnv) -> None:
    """The generated configuration, not the dist's: one DICOMweb source on the page's
    origin, the viewer's router under /viewer."""
    response = web.client.get("/viewer/app-config.js")
    assert response.status_code == 200
    text = response.text
    assert "public: 'demo'" not in text
    config = json.loads(text[text.index("{"):text.index("};\n") + 1])
    assert config["routerBasename"] == "/viewer"
    (source,) = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"]
    settings = source["configuration"]
    assert settings["qidoRoot"] == settings["wadoRoot"] == "/dicomweb"
    assert settings["wadoUriRoot"] == "/dicomweb/wado"
    assert settings["imageRendering"] == "wadors"
    assert settings["thumbnailRendering"] == "thumbnail"
    assert settings["supportsFuzzyMatching"] is False
    assert settings["omitQuotationForMultipartRequest"] is True
    assert "window.location.origin + source.configuration[root]" in text
    assert response.headers["cache-control"] == "no-cache"


def test_viewer_root_redirects_to_the_mount(web: WebEnv) -> None:
    response = web.client.get("/viewer?StudyInstanceUIDs=1.2.3")
    assert response.status_code == 307
    assert response.headers["location"] == f"{MOUNT}?StudyInstanceUIDs=1.2.3"


def test_opening_studies_in_the_viewer_is_audited(web: WebEnv) -> None:
    """Each study the viewer is opened on is an audited read, tied to the study."""
    seed_user(web.database, "hgreg")
    seeded = seed_drafted_study(web.database, web.store)
    web.login("hgreg")
    response = web.client.get(f"/viewer/viewer?StudyInstanceUIDs={seeded.study_uid},1.2.3",
                              headers=HTML)
    assert response.status_code == 200
    events = audit_events(web.database, "ohif_opened")
    assert [(e.actor, e.study_id, e.object_id) for e in events] == [
        ("hgreg", seeded.study_id, seeded.study_uid), ("hgreg", None, None)]


def test_study_page_links_to_the_viewer(web: WebEnv) -> None:
    seed_user(web.database, "hgreg")
    seeded = seed_drafted_study(web.database, web.store)
    web.login("hgreg")
    page = web.client.get(f"/studies/{seeded.study_id}", headers=HTML).text
    assert (f'href="/viewer/viewer?StudyInstanceUIDs={seeded.study_uid}"' in page
            and "Open in OHIF" in page)


def test_without_the_dist_the_viewer_is_off(bare: WebEnv) -> None:
    """No link on the study page; /viewer/ says how to install it."""
    seed_user(bare.database, "hgreg")
    seeded = seed_drafted_study(bare.database, bare.store)
    bare.login("hgreg")
    page = bare.client.get(f"/studies/{seeded.study_id}", headers=HTML).text
    assert "Open in OHIF" not in page and "/viewer/" not in page
    for path in ("/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/app-config.js"):
        response = bare.client.get(path, headers=HTML)
        assert response.status_code == 404
        assert "make ohif" in response.text
    assert NOT_INSTALLED in bare.client.get("/viewer/app-config.js").json()["detail"]


def test_mount_index_html_hashes_the_scripts_as_served() -> None:
    html, hashes = mount_index_html(INDEX)
    assert len(hashes) == 2
    assert all(h.startswith("'sha256-") for h in hashes)
    assert 'window.PUBLIC_URL="/"' not in html


def test_qido_leaves_out_an_empty_modalities_in_study(web: WebEnv) -> None:
    """A study with no modality to list has no ModalitiesInStudy attribute (OHIF's study
    list fails on an empty one); a study with instances lists theirs."""
    seed_user(web.database, "hgreg")
    drafted = seed_drafted_study(web.database, web.store, patient_id="PID-1")
    empty = seed_study(web.database, patient_name="ROE^RICHARD", patient_id="PID-2",
                       accession="ACC-2", state=StudyState.FAILED)
    web.login("hgreg")
    response = web.client.get("/dicomweb/studies", params={"includefield": "00080061"})
    assert response.status_code == 200
    by_uid = {r["0020000D"]["Value"][0]: r for r in response.json()}
    assert by_uid[drafted.study_uid]["00080061"]["Value"] == ["DX", "SR"]
    assert "00080061" not in by_uid[empty.study_instance_uid]
    assert by_uid[empty.study_instance_uid]["00201208"]["Value"] == [0]


def test_a_dist_without_the_expected_public_path_is_reported(
    web: WebEnv, caplog: pytest.LogCaptureFixture,
) -> None:
    """A dist whose app bundle does not set its public path the expected way (another
    build) is logged as an error when the page is first served."""
    seed_user(web.database, "hgreg")
    web.login("hgreg")
    web.client.get("/viewer/", headers=HTML)
    assert "ohif_public_path_not_found" not in caplog.text
    bundle = web.settings.web.ohif_dist / "app.bundle.0f6159c501addfe9.js"
    bundle.write_bytes(b'r.p="/";console.log("minified");\n')
    index = web.settings.web.ohif_dist / "index.html"
    index.write_text(INDEX + "\n", encoding="utf-8")  # a new install: the page is read again
    assert web.client.get("/viewer/", headers=HTML).status_code == 200
    assert "ohif_public_path_not_found" in caplog.text
