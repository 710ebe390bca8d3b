"""Every bad input a stranger can send, table-driven, through gradio_client, raw HTTP and the CLI: each gets
one sentence (never `{"error": null}`, never a traceback, in the answer or in the server's log), and a normal
Step right after succeeds in the same session."""
from __future__ import annotations

import json
import math
import uuid

import httpx
import pytest
from gradio_client import Client

from engines.__main__ import main as cli_main
from explorer.handlers import Panel
from explorer.limits import ServerLimits
from tests.conftest import panel_of

SERVER_LIMITS = ServerLimits()   # for the app_url fixture
GOOD = {"method": "autoregressive", "prompt": "Once upon a time", "target": "tiny-target", "draft": "tiny-draft",
        "seed": 0, "max_new_tokens": 3, "temperature": 0.0, "top_k": 0, "top_p": 1.0}
INF = float("inf")
SLOW = {"httpx_kwargs": {"timeout": 600}}   # a shared, loaded machine can take minutes to answer

# (parameter of /step, value sent, words the answer must contain)
BAD = [
    ("max_new_tokens", math.nan, "max new tokens must be a whole number, not nan"),
    ("max_new_tokens", INF, "max new tokens must be a whole number, not inf"),
    ("max_new_tokens", -3, "max new tokens must be between 1 and 512, not -3"),
    ("max_new_tokens", 2.5, "max new tokens must be a whole number, not 2.5"),
    ("max_new_tokens", "abc", "max new tokens must be a whole number, not 'abc'"),
    ("max_new_tokens", None, "max new tokens is empty"),
    ("max_new_tokens", True, "max new tokens must be a whole number, not True"),
    ("temperature", math.nan, "temperature must be between 0 and 2, not nan"),
    ("temperature", INF, "temperature must be between 0 and 2, not inf"),
    ("temperature", "hot", "temperature must be a number, not 'hot'"),
    ("top_k", -1, "top-k must be between 0 and 1000, not -1"),
    ("top_p", 0, "top-p must be between 0.01 and 1, not 0"),
    ("seed", -1, "seed must be between 0 and"),
    ("seed", 1.5, "seed must be a whole number, not 1.5"),
    ("seed", INF, "seed must be a whole number, not inf"),
    ("prompt", "   ", "The prompt is empty"),
    ("prompt", 123, "The prompt must be text, not 123"),
    ("prompt", "x" * 20_000, "The prompt is 20000 characters long"),
    ("method", "nope", "Unknown method 'nope'"),
    ("method", ["autoregressive"], "Unknown method"),
    ("target", "../../", "Unknown model '..'"),
    ("target", 7, "The target model must be text, not 7"),
    ("chat", "yes", "The chat box is on or off"),
]
SPECULATIVE = [   # a method's own settings, named <method>_<setting>
    ("speculative_k", 0, "k must be between 1 and 16, not 0"),
    ("speculative_k", 2.5, "k must be a whole number, not 2.5"),
    ("speculative_drafter", "oracle", "drafter must be one of"),
]
CASES = [({}, *case) for case in BAD] + [({"method": "speculative"}, *case) for case in SPECULATIVE]
IDS = [f"{name}={str(value)[:12]}" for _, name, value, _ in CASES]


@pytest.fixture(scope="module")
def url(tiny_target, tiny_draft, app_url):
    return app_url


def raw_position(answer: list) -> str:
    """The position line in a raw HTTP answer: every panel output, in the panel's order."""
    return answer[Panel.names().index("position")]


def one_sentence(message: str | None, says: str) -> None:
    assert message and says in message, message
    assert "Traceback" not in message and "\n" not in message and len(message) < 400


def json_compliant(value) -> bool:
    return not (isinstance(value, float) and not math.isfinite(value))


# gradio_client refuses to send NaN and infinity itself (strict JSON); raw HTTP sends them below
@pytest.mark.parametrize("base, name, value, says", [c for c in CASES if json_compliant(c[2])],
                         ids=[i for c, i in zip(CASES, IDS) if json_compliant(c[2])])
def test_gradio_client(url, base, name, value, says, capfd):
    c = Client(url, verbose=False, download_files=False, **SLOW)
    with pytest.raises(Exception) as e:
        c.predict(**{**GOOD, **base, name: value}, api_name="/step")
    one_sentence(str(e.value), says)
    assert "Traceback" not in capfd.readouterr().err      # the server logged no traceback for it
    assert "Iteration 1 of 1" in panel_of(c.predict(**{**GOOD, **base}, api_name="/step"))["position"]


@pytest.fixture(scope="module")
def parameters(url) -> dict[str, list[tuple[str, object]]]:
    """Each action's parameters in order, with their defaults, as the server publishes them."""
    api = Client(url, verbose=False, **SLOW).view_api(return_format="dict", print_info=False)["named_endpoints"]
    return {name.strip("/"): [(p["parameter_name"], p.get("parameter_default")) for p in e["parameters"]]
            for name, e in api.items()}


def post(url: str, api: str, data: dict, session: str, parameters: dict, raw: str | None = None) -> str:
    """One call over raw HTTP in `session` (Gradio's /call API: values in parameter order, unnamed ones at their
    defaults), returning the event stream's last data line."""
    values = [data.get(name, default) for name, default in parameters[api]]
    body = raw or json.dumps({"data": values, "session_hash": session})   # NaN, Infinity as Python's json writes
    r = httpx.post(f"{url}gradio_api/call/{api}", content=body, headers={"content-type": "application/json"},
                   timeout=600)
    r.raise_for_status()
    events = httpx.get(f"{url}gradio_api/call/{api}/{r.json()['event_id']}", timeout=600).text
    return [line for line in events.splitlines() if line.startswith("data:")][-1][len("data:"):]


@pytest.mark.parametrize("base, name, value, says", CASES, ids=IDS)
def test_raw_http(url, parameters, base, name, value, says):
    session = uuid.uuid4().hex
    answer = json.loads(post(url, "step", {**GOOD, **base, name: value}, session, parameters))
    assert isinstance(answer, dict), answer
    one_sentence(answer["error"], says)
    good = json.loads(post(url, "step", {**GOOD, **base}, session, parameters))
    assert isinstance(good, list) and "Iteration 1 of 1" in raw_position(good)


def test_raw_http_a_number_no_float_holds(url, parameters):
    """1e400 is valid JSON that no float holds: Python reads it as infinity."""
    session = uuid.uuid4().hex
    marked = {**GOOD, "max_new_tokens": "MARK"}
    values = [marked.get(name, default) for name, default in parameters["step"]]
    raw = json.dumps({"data": values, "session_hash": session}).replace('"MARK"', "1e400")
    answer = json.loads(post(url, "step", {}, session, parameters, raw))
    one_sentence(answer["error"], "max new tokens must be a whole number, not inf")


@pytest.mark.parametrize("api, data, says", [
    ("back", {"method": "nope"}, "Unknown method"),
    ("seek", {"method": "autoregressive", "value": math.nan}, "history position must be a whole number"),
    ("seek", {"method": "autoregressive", "value": -2}, "history position must be a whole number from 0"),
    ("stop", {"method": 5}, "Unknown method"),
    ("race", {"prompt": "Once", "target": "tiny-target", "max_new_tokens": math.nan}, "New tokens must be"),
    ("audit", {"prompt": "Once", "method_name": "tree", "target": "tiny-target", "max_new_tokens": 1e9,
               "float64": True}, "New tokens must be a whole number from 1 to 256"),
])
def test_raw_http_other_actions(url, parameters, api, data, says):
    session = uuid.uuid4().hex
    one_sentence(json.loads(post(url, api, data, session, parameters))["error"], says)
    good = json.loads(post(url, "step", GOOD, session, parameters))
    assert "Iteration 1 of 1" in raw_position(good)


@pytest.mark.parametrize("flags, says", [
    (["--max-new-tokens", "nan"], "invalid int value"),
    (["--max-new-tokens", "2.5"], "invalid int value"),
    (["--temperature", "nan"], "temperature must be between 0 and 2, not nan"),
    (["--temperature", "1e400"], "temperature must be between 0 and 2, not inf"),
    (["--top-p", "-0.5"], "top-p must be between 0.01 and 1"),
    (["--seed", "-1"], "seed must be between 0 and"),
    (["--prompt", "   "], "prompt is empty"),
])
def test_cli(flags, says, capsys):
    good = ["trace", "--method", "autoregressive", "--prompt", "Once", "--target", "tiny-target",
            "--max-new-tokens", "2"]
    assert exit_code([*good, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "Traceback" not in err[0]
    assert exit_code(good) == 0


def exit_code(args: list[str]) -> int:
    """The CLI's exit code, in this process (argparse exits by itself on a flag it cannot parse)."""
    try:
        return cli_main(args)
    except SystemExit as e:
        return e.code


def test_a_nan_temperature_is_refused_in_one_line(cli):
    r = cli("trace", "--method", "autoregressive", "--prompt", "Once", "--target", "tiny-target", "--temperature",
            "nan")
    assert r.returncode == 2 and r.stderr.strip() == "error: temperature must be between 0 and 2, not nan."
