"""CheXprompt: the prompt, reading recorded judge answers, aggregation, and the chat client
against a local OpenAI-compatible server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from node.cli.main import main
from tests.conftest import free_port
from workers.evaluation.chexprompt import (
    SYSTEM_PROMPT,
    ChatEndpoint,
    ChexpromptError,
    ErrorKind,
    Judgement,
    Significance,
    aggregate,
    build_messages,
    parse_response,
    run_chexprompt,
)

DATA = Path(__file__).resolve().parent / "data"
SIG, INS = Significance.SIGNIFICANT, Significance.INSIGNIFICANT
K = ErrorKind


def recorded(name: str) -> bytes:
    """A recorded ``/chat/completions`` answer (the whole HTTP body)."""
    return (DATA / f"judge_{name}.json").read_bytes()


def recorded_content(name: str) -> str:
    """The assistant message of a recorded answer."""
    content: str = json.loads(recorded(name))["choices"][0]["message"]["content"]
    return content


def judgement(significant: dict[ErrorKind, int] | None = None,
              insignificant: dict[ErrorKind, int] | None = None) -> Judgement:
    """Counts with every unnamed kind 0."""
    return Judgement({
        SIG: {k: (significant or {}).get(k, 0) for k in ErrorKind},
        INS: {k: (insignificant or {}).get(k, 0) for k in ErrorKind},
    })


# The prompt -----------------------------------------------------------------------------

EXPECTED_USER = (
    "Compare the candidate report with the reference report. Count the errors of the "
    "candidate in each of these six categories:\n"
    "(a) False report of a finding in the candidate;\n"
    "(b) Missing a finding present in the reference;\n"
    "(c) Misidentification of a finding's anatomic location/position;\n"
    "(d) Misassessment of the severity of a finding;\n"
    "(e) Mentioning a comparison that isn't in the reference;\n"
    "(f) Omitting a comparison detailing a change from a prior study;\n"
    "Count each error once, either as clinically significant (it could change the "
    "patient's management) or as clinically insignificant. Answer with a JSON object "
    "of exactly this shape, with non-negative integer counts, and nothing else:\n"
    '{"clinically_significant": {"a": 0, "b": 0, "c": 0, "d": 0, "e": 0, "f": 0}, '
    '"clinically_insignificant": {"a": 0, "b": 0, "c": 0, "d": 0, "e": 0, "f": 0}}\n\n'
    "Reference report:\nSmall left pleural effusion. Stable cardiomegaly.\n\n"
    "Candidate report:\nNo pleural effusion. Heart size is normal.\n"
)


def test_prompt_is_a_system_and_a_user_message() -> None:
    """System: the judge's role; user: the six categories, the answer's shape, then the
    reference and the candidate (surrounding whitespace stripped), in that order."""
    messages = build_messages("  Small left pleural effusion. Stable cardiomegaly.\n\n",
                              "\nNo pleural effusion. Heart size is normal.  ")
    assert messages == [{"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": EXPECTED_USER}]
    assert SYSTEM_PROMPT.startswith("You are an expert radiologist")
    assert SYSTEM_PROMPT.endswith("You answer only with JSON.")


def test_the_shape_the_prompt_asks_for_is_what_the_parser_reads() -> None:
    """The example answer in the prompt parses to all-zero counts."""
    user = build_messages("A.", "B.")[1]["content"]
    example = next(line for line in user.splitlines() if line.startswith("{"))
    assert parse_response(example) == judgement()


# Reading recorded answers -------------------------------------------------------------------

def test_well_formed_answer() -> None:
    """A bare JSON object with every category."""
    parsed = parse_response(recorded_content("well_formed"))
    assert parsed == judgement({K.FALSE_FINDING: 1, K.WRONG_SEVERITY: 1},
                               {K.MISSING_FINDING: 2})
    assert parsed.total(SIG) == 2 and parsed.total(INS) == 2


def test_fenced_answer_with_prose_labels_and_missing_categories() -> None:
    """Prose around a ```json fence, "(b)"-style keys, "1" and 1.0 as counts, categories
    left out count 0."""
    parsed = parse_response(recorded_content("fenced_with_prose"))
    assert parsed == judgement({K.MISSING_FINDING: 1},
                               {K.FALSE_FINDING: 1, K.MISSING_COMPARISON: 1})


def test_object_inside_prose_without_a_fence() -> None:
    """The object is found between the first "{" and the last "}"."""
    parsed = parse_response(recorded_content("prose_around_object"))
    assert parsed == judgement({}, {K.WRONG_LOCATION: 1})


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing_group", "judge answer lacks 'clinically_insignificant'"),
        ("negative_count", "clinically_significant.b: count must be a non-negative integer, "
                           "got -1"),
        ("word_count", "clinically_significant.a: count must be a number, got 'one'"),
        ("unknown_category", "unknown error category 'g'"),
        ("no_json", "judge answer holds no JSON object"),
        ("truncated", "judge answer is not valid JSON: Expecting ',' delimiter"),
    ],
)
def test_malformed_answers_raise_a_named_error(name: str, message: str) -> None:
    """Each unreadable recorded answer raises ChexpromptError saying what is wrong."""
    with pytest.raises(ChexpromptError) as caught:
        parse_response(recorded_content(name))
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"clinically_significant": {"a": 1.5}, "clinically_insignificant": {}}',
         "clinically_significant.a: count must be a non-negative integer, got 1.5"),
        ('{"clinically_significant": {"a": true}, "clinically_insignificant": {}}',
         "clinically_significant.a: count must be a number, got True"),
        ('{"clinically_significant": {"a": null}, "clinically_insignificant": {}}',
         "clinically_significant.a: count must be a number, got None"),
        ('{"clinically_significant": [], "clinically_insignificant": {}}',
         "judge answer lacks 'clinically_significant'"),
        ('{"clinically_significant": {"a": 1,}, "clinically_insignificant": {}}',
         "judge answer is not valid JSON: Expecting property name enclosed in double quotes"),
    ],
    ids=["fraction", "boolean", "null", "group-not-object", "trailing-comma"],
)
def test_invalid_counts_and_syntax(content: str, message: str) -> None:
    """Fractions, booleans and nulls are not counts; a group must be an object; bad JSON
    inside the braces is reported as such."""
    with pytest.raises(ChexpromptError) as caught:
        parse_response(content)
    assert str(caught.value) == message


# Aggregation ------------------------------------------------------------------------------

def test_means_over_reports() -> None:
    """Three judgements: per-report means of totals, of each kind, and the share without a
    significant error (significant totals 2, 1, 0; insignificant 2, 2, 1)."""
    judgements = [parse_response(recorded_content(n))
                  for n in ("well_formed", "fenced_with_prose", "prose_around_object")]
    metrics = aggregate(judgements, resamples=100)
    values = {name: estimate.value for name, estimate in metrics.items()}
    assert values == pytest.approx({
        "significant_errors": 1.0, "insignificant_errors": 5 / 3,
        "no_significant_error": 1 / 3,
        "significant/false_finding": 1 / 3, "significant/missing_finding": 1 / 3,
        "significant/wrong_location": 0.0, "significant/wrong_severity": 1 / 3,
        "significant/false_comparison": 0.0, "significant/missing_comparison": 0.0,
        "insignificant/false_finding": 1 / 3, "insignificant/missing_finding": 2 / 3,
        "insignificant/wrong_location": 1 / 3, "insignificant/wrong_severity": 0.0,
        "insignificant/false_comparison": 0.0, "insignificant/missing_comparison": 1 / 3,
    })


def test_intervals_of_two_reports_span_both() -> None:
    """Two reports with 0 and 2 significant errors: every resample is (0,0), (0,2) or (2,2),
    each all-same pair drawn about a quarter of the time, so the 95% interval of the mean is
    [0, 2] around 1 and that of the share without a significant error [0, 1] around 0.5."""
    metrics = aggregate([judgement(), judgement({K.FALSE_FINDING: 2})], resamples=400, seed=3)
    assert metrics["significant_errors"].value == 1.0
    assert (metrics["significant_errors"].low, metrics["significant_errors"].high) == (0.0, 2.0)
    assert metrics["no_significant_error"].value == 0.5
    assert (metrics["no_significant_error"].low, metrics["no_significant_error"].high) == \
        (0.0, 1.0)
    assert metrics["insignificant_errors"].value == 0.0
    assert (metrics["insignificant_errors"].low, metrics["insignificant_errors"].high) == \
        (0.0, 0.0)


def test_identical_reports_give_a_point_interval() -> None:
    """With every report alike the interval collapses onto the mean."""
    same = judgement({K.MISSING_FINDING: 1}, {K.WRONG_LOCATION: 3})
    metrics = aggregate([same] * 5, resamples=50)
    assert metrics["insignificant_errors"].value == 3.0
    assert (metrics["insignificant_errors"].low, metrics["insignificant_errors"].high) == \
        (3.0, 3.0)
    assert metrics["no_significant_error"].value == 0.0


def test_aggregation_seed_changes_only_the_intervals() -> None:
    """The same seed repeats the intervals; another seed moves some, never the means."""
    judgements = [parse_response(recorded_content(n))
                  for n in ("well_formed", "fenced_with_prose", "prose_around_object")] * 2
    judgements.append(judgement({K.FALSE_FINDING: 3}))
    first = aggregate(judgements, resamples=60, seed=1)
    assert aggregate(judgements, resamples=60, seed=1) == first
    other = aggregate(judgements, resamples=60, seed=2)
    assert {n: e.value for n, e in other.items()} == {n: e.value for n, e in first.items()}
    assert other != first


def test_nothing_to_aggregate() -> None:
    with pytest.raises(ValueError, match="no judgements"):
        aggregate([])


# A local OpenAI-compatible server ------------------------------------------------------------

@dataclass
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, bytes]


@dataclass
class JudgeServer:
    """Answers ``POST /v1/chat/completions`` from recorded answers chosen by candidate text.

    ``answers`` maps a candidate report to a recorded answer's name or to an
    ``(HTTP status, body)`` pair; ``delay_s`` holds every answer back.
    """

    url: str = ""
    answers: dict[str, str | Answer] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    delay_s: float = 0.0

    def answer(self, path: str, body: bytes) -> Answer:
        if path != "/v1/chat/completions":
            return 404, b'{"error": "not found"}'
        user = json.loads(body)["messages"][1]["content"]
        candidate = user.split("Candidate report:\n", 1)[1].strip()
        chosen = self.answers.get(candidate)
        if chosen is None:
            return 400, b'{"error": "unexpected candidate"}'
        return (200, recorded(chosen)) if isinstance(chosen, str) else chosen


def _handler(judge: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            judge.received.append(Received(
                "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            status, payload = judge.answer(self.path, body)
            if judge.delay_s:
                time.sleep(judge.delay_s)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the client gave up waiting

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def judge() -> Iterator[JudgeServer]:
    """A judge server on 127.0.0.1 in a thread."""
    server_state = JudgeServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server_state))
    server.daemon_threads = True
    server.block_on_close = False
    server_state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


PAIRS = [
    ("s1", "Small left pleural effusion. Mild cardiomegaly.",
     "Large left pleural effusion. No cardiomegaly."),
    ("s2", "Interval improvement of right lower lobe pneumonia.",
     "Right lower lobe pneumonia, new since the prior study."),
    ("s3", "Left basilar atelectasis.", "Right basilar atelectasis."),
    ("s4", "Endotracheal tube 4 cm above the carina.", "Endotracheal tube in place."),
]
GOOD = {"Large left pleural effusion. No cardiomegaly.": "well_formed",
        "Right lower lobe pneumonia, new since the prior study.": "fenced_with_prose",
        "Right basilar atelectasis.": "prose_around_object"}


def endpoint(judge: JudgeServer, monkeypatch: pytest.MonkeyPatch, *,
             timeout_s: float = 5.0) -> ChatEndpoint:
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-local-123")
    return ChatEndpoint.from_settings(judge.url + "/", "judge-model", "TEST_JUDGE_KEY",
                                      timeout_s)


def test_endpoint_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trailing slash is dropped; the key comes from the named variable, if set."""
    monkeypatch.setenv("TEST_JUDGE_KEY", "secret")
    monkeypatch.setenv("TEST_EMPTY_KEY", "")
    assert ChatEndpoint.from_settings("http://h:8000/v1/", "m", "TEST_JUDGE_KEY", 9.0) == \
        ChatEndpoint("http://h:8000/v1", "m", "secret", 9.0)
    assert ChatEndpoint.from_settings("http://h/v1", "m", "TEST_EMPTY_KEY", 1.0).api_key is None
    assert ChatEndpoint.from_settings("http://h/v1", "m", "", 1.0).api_key is None


def test_requests_and_result_through_a_server(judge: JudgeServer,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """One POST per report to {url}/chat/completions with the model, the prompt, temperature
    0, 512 tokens and the bearer key; an unreadable answer is listed as failed and left out
    of the means."""
    judge.answers = {**GOOD, "Endotracheal tube in place.": "missing_group"}
    events: list[tuple[str, float]] = []
    result = run_chexprompt(PAIRS, endpoint(judge, monkeypatch),
                            progress=lambda m, f: events.append((m, f)), resamples=100)

    assert len(judge.received) == 4
    for request, (_, reference, candidate) in zip(judge.received, PAIRS, strict=True):
        assert request.method == "POST"
        assert request.path == "/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer sk-local-123"
        assert request.headers["content-type"] == "application/json"
        assert json.loads(request.body) == {
            "model": "judge-model", "messages": build_messages(reference, candidate),
            "temperature": 0.0, "max_tokens": 512}
    assert events == [("judging 1/4", 0.25), ("judging 2/4", 0.5), ("judging 3/4", 0.75),
                      ("judging 4/4", 1.0)]

    assert result.judged == 3
    assert result.failed == [("s4", "judge answer lacks 'clinically_insignificant'")]
    assert result.metrics["significant_errors"].value == pytest.approx(1.0)
    assert result.metrics["insignificant_errors"].value == pytest.approx(5 / 3)
    assert result.metrics["no_significant_error"].value == pytest.approx(1 / 3)
    as_json = result.to_json()
    assert as_json["failed"] == [{"id": "s4",
                                  "error": "judge answer lacks 'clinically_insignificant'"}]
    assert as_json["metrics"]["insignificant_errors"]["value"] == 1.6667


def test_no_authorization_without_a_key(judge: JudgeServer) -> None:
    """No key variable configured: no Authorization header is sent."""
    judge.answers = dict(GOOD)
    run_chexprompt(PAIRS[:1], ChatEndpoint.from_settings(judge.url, "judge-model", "", 5.0),
                   resamples=10)
    assert "authorization" not in judge.received[0].headers


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((500, b'{"error": {"message": "CUDA out of memory"}}'),
         "chat endpoint answered HTTP 500"),
        ((401, b'{"error": "invalid api key"}'), "chat endpoint answered HTTP 401"),
        ((200, b"<html><body>502 Bad Gateway</body></html>"),
         "chat endpoint answered something that is not JSON"),
        ((200, b'{"object": "error", "message": "model not found"}'),
         "chat endpoint answer has no choices[0].message"),
        ((200, b'{"choices": [{"message": {"role": "assistant", "content": null}}]}'),
         "chat endpoint answer content is not text"),
    ],
    ids=["http-500", "http-401", "not-json", "no-choices", "null-content"],
)
def test_endpoint_failures_end_the_run(judge: JudgeServer, monkeypatch: pytest.MonkeyPatch,
                                       answer: Answer, message: str) -> None:
    """A failing answer on the second report raises ChexpromptError at once: the later
    reports are not sent and no partial result is returned."""
    judge.answers = {**GOOD, PAIRS[1][2]: answer}
    with pytest.raises(ChexpromptError) as caught:
        run_chexprompt(PAIRS[:3], endpoint(judge, monkeypatch), resamples=10)
    assert str(caught.value) == message
    assert len(judge.received) == 2


def test_unreachable_endpoint() -> None:
    """Nothing listening on the port: the error says the endpoint is unreachable."""
    closed = ChatEndpoint(f"http://127.0.0.1:{free_port()}/v1", "judge-model", None, 2.0)
    with pytest.raises(ChexpromptError, match=r"^chat endpoint unreachable: "):
        run_chexprompt(PAIRS[:1], closed, resamples=10)


def test_slow_endpoint_times_out(judge: JudgeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer slower than timeout_s counts as unreachable."""
    judge.answers = dict(GOOD)
    judge.delay_s = 1.5
    started = time.monotonic()
    with pytest.raises(ChexpromptError, match=r"^chat endpoint unreachable: "):
        run_chexprompt(PAIRS[:1], endpoint(judge, monkeypatch, timeout_s=0.3), resamples=10)
    assert time.monotonic() - started < 1.4


def test_no_readable_answer_at_all(judge: JudgeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer unreadable: ChexpromptError counting the failures."""
    judge.answers = {PAIRS[0][2]: "no_json", PAIRS[1][2]: "truncated"}
    with pytest.raises(ChexpromptError) as caught:
        run_chexprompt(PAIRS[:2], endpoint(judge, monkeypatch), resamples=10)
    assert str(caught.value) == "no judge answer could be read (2 failed)"


# Through ``radnode eval`` ----------------------------------------------------------------------

def configure(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """[evaluation] settings through the environment, with the key in its own variable."""
    monkeypatch.setenv("RADNODE_EVALUATION__CHEXPROMPT_URL", url)
    monkeypatch.setenv("RADNODE_EVALUATION__CHEXPROMPT_MODEL", "site-judge")
    monkeypatch.setenv("RADNODE_EVALUATION__CHEXPROMPT_API_KEY_ENV", "SITE_JUDGE_KEY")
    monkeypatch.setenv("RADNODE_EVALUATION__CHEXPROMPT_TIMEOUT_S", "5")
    monkeypatch.setenv("SITE_JUDGE_KEY", "sk-site-456")


def predictions(tmp_path: Path, pairs: list[tuple[str, str, str]]) -> Path:
    path = tmp_path / "pred.jsonl"
    path.write_text("".join(json.dumps({"id": i, "reference": r, "prediction": p}) + "\n"
                            for i, r, p in pairs), encoding="utf-8")
    return path


def test_eval_command_judges_with_the_configured_endpoint(
    tmp_path: Path, judge: JudgeServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Model and key come from [evaluation]; the JSON holds the judged count, the failures
    and the means with intervals drawn with --bootstrap-seed."""
    configure(monkeypatch, judge.url)
    judge.answers = dict(GOOD)
    out = tmp_path / "out.json"
    assert main(["eval", str(predictions(tmp_path, PAIRS[:3])), "--json", str(out),
                 "--resamples", "80", "--bootstrap-seed", "11"]) == 0

    assert [json.loads(r.body)["model"] for r in judge.received] == ["site-judge"] * 3
    assert {r.headers["authorization"] for r in judge.received} == {"Bearer sk-site-456"}
    result = json.loads(out.read_text(encoding="utf-8"))
    judged = [parse_response(recorded_content(GOOD[p])) for _, _, p in PAIRS[:3]]
    expected = {n: e.as_dict() for n, e in aggregate(judged, resamples=80, seed=11).items()}
    assert result["chexprompt"] == {"judged": 3, "failed": [], "metrics": expected}
    assert "rouge_l" in result["text"]
    assert ("CheXprompt: 1.00 clinically significant and 1.67 insignificant errors per "
            "report (3 judged)") in capsys.readouterr().out


def test_chexprompt_intervals_follow_the_bootstrap_seed(
    tmp_path: Path, judge: JudgeServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two --bootstrap-seed values: the same means, intervals each as aggregate() draws them
    with that seed, and different from each other."""
    configure(monkeypatch, judge.url)
    judge.answers = dict(GOOD)
    pred = predictions(tmp_path, PAIRS[:3])
    results = {}
    for seed in (0, 5):
        out = tmp_path / f"seed{seed}.json"
        assert main(["eval", str(pred), "--json", str(out), "--resamples", "40",
                     "--bootstrap-seed", str(seed)]) == 0
        results[seed] = json.loads(out.read_text(encoding="utf-8"))["chexprompt"]["metrics"]
    judged = [parse_response(recorded_content(GOOD[p])) for _, _, p in PAIRS[:3]]
    for seed, metrics in results.items():
        assert metrics == {n: e.as_dict()
                           for n, e in aggregate(judged, resamples=40, seed=seed).items()}
    assert {n: m["value"] for n, m in results[0].items()} == \
        {n: m["value"] for n, m in results[5].items()}
    assert results[0] != results[5]


@pytest.mark.parametrize(
    ("answer", "error"),
    [((503, b'{"error": "overloaded"}'), "chat endpoint answered HTTP 503"),
     ((200, b"not json at all"), "chat endpoint answered something that is not JSON")],
    ids=["http-error", "not-json"],
)
def test_eval_command_keeps_other_metrics_when_chexprompt_fails(
    tmp_path: Path, judge: JudgeServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], answer: Answer, error: str,
) -> None:
    """Exit status 1, the error under "chexprompt" and on stderr, the rest still written."""
    configure(monkeypatch, judge.url)
    judge.answers = {**GOOD, PAIRS[0][2]: answer}
    out = tmp_path / "out.json"
    assert main(["eval", str(predictions(tmp_path, PAIRS[:2])), "--json", str(out),
                 "--resamples", "20"]) == 1
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["chexprompt"] == {"error": error}
    assert result["count"] == 2
    assert set(result["text"]) == {"rouge_l", "bleu_1", "bleu_4"}
    captured = capsys.readouterr()
    assert f"radnode eval: CheXprompt failed: {error}" in captured.err
    assert captured.out.startswith("2 studies; uncertain counted negative")


def test_eval_command_with_unreachable_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A configured endpoint that does not answer: status 1 and the error in the JSON."""
    configure(monkeypatch, f"http://127.0.0.1:{free_port()}/v1")
    out = tmp_path / "out.json"
    assert main(["eval", str(predictions(tmp_path, PAIRS[:1])), "--json", str(out),
                 "--resamples", "10"]) == 1
    error = json.loads(out.read_text(encoding="utf-8"))["chexprompt"]["error"]
    assert error.startswith("chat endpoint unreachable: ")


def test_no_chexprompt_skips_the_judge(
    tmp_path: Path, judge: JudgeServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--no-chexprompt: no request is sent and the JSON has no "chexprompt"."""
    configure(monkeypatch, judge.url)
    judge.answers = dict(GOOD)
    out = tmp_path / "out.json"
    assert main(["eval", str(predictions(tmp_path, PAIRS[:3])), "--json", str(out),
                 "--resamples", "10", "--no-chexprompt"]) == 0
    assert judge.received == []
    assert "chexprompt" not in json.loads(out.read_text(encoding="utf-8"))


def test_chexprompt_is_off_by_default(tmp_path: Path) -> None:
    """Without [evaluation] chexprompt_url the JSON has no "chexprompt"."""
    out = tmp_path / "out.json"
    assert main(["eval", str(predictions(tmp_path, PAIRS[:1])), "--json", str(out),
                 "--resamples", "10"]) == 0
    assert "chexprompt" not in json.loads(out.read_text(encoding="utf-8"))

