"""Tool calls: the definitions a workload file offers, the calls each wire format streams (whole, or in fragments
joined by index), perfkit's answer with the file's result so the conversation goes on, and each turn's verdict
(which tool, valid arguments, as the dataset expected, a call left unparsed), held against the scripted servers'
own record of each chunk."""

import json

import pytest

from fake_ollama import FakeOllama
from fake_openai import FakeOpenAI
from perfkit.client.backends import Sampling
from perfkit.client.toolcalls import CallFragments, v1_messages
from perfkit.core.store import RunStore
from perfkit.core.tools import ToolCall, Tools, looks_like_a_call
from perfkit.kinds.ollama import OllamaBackend
from perfkit.kinds.ollama.client import wire_messages
from perfkit.kinds.openai import OpenAIBackend
from perfkit.measure.runner import Runner
from perfkit.measure.workload import Workload
from perfkit.workloads import WorkloadParams, read_conversations
from perfkit.workloads.spec import BUILTIN, WorkloadError
from perfkit.workloads.tools import judge, read_definitions

GAP_S = 0.12
TOL_S = 0.10
NS = 1_000_000_000
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "weather",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


def _seen_when_sent(t_seen_ns: int, chunk: dict) -> bool:
    return chunk["t_write_ns"] <= t_seen_ns <= chunk["t_sent_ns"] + TOL_S * NS


@pytest.fixture(scope="module")
def ollama():
    with FakeOllama(token_gap_s=GAP_S, tokens=2) as f:
        yield f


@pytest.fixture(scope="module")
def v1():
    with FakeOpenAI(token_gap_s=GAP_S, tokens=2) as f:
        yield f


def test_ollama_streams_a_call_whole_and_it_is_the_first_answer_token(ollama):
    rec = OllamaBackend(ollama.url).generate("tool-caller", "weather in Paris?", Sampling(num_predict=16),
                                             tools=Tools((WEATHER,)))
    assert rec.ok, rec.error
    assert rec.tool_calls == [{"name": "get_weather", "arguments": '{"city": "x"}', "id": "call_1"}]
    sent = ollama.sent[-1]
    call = next(c for c in sent if c["phase"] == "call")
    assert _seen_when_sent(rec.t_first_token_ns, call)
    assert rec.ttfa_s == rec.ttft_s  # a call is output the user's agent acts on, not thinking
    body = ollama.requests[-1]
    assert body["tools"] == [WEATHER] and "tool_choice" not in body  # Ollama has no tool choice


def test_v1_fragments_are_joined_by_index_and_timed_from_the_first(v1):
    rec = OpenAIBackend(v1.url).generate("tool-caller", "weather in Paris?", Sampling(num_predict=16),
                                         tools=Tools((WEATHER,), "required"))
    assert rec.ok, rec.error
    assert rec.tool_calls == [{"name": "get_weather", "arguments": '{"city": "x"}', "id": "call_9"}]
    assert rec.done_reason == "tool_calls"
    calls = [c for c in v1.sent[-1] if c["phase"] == "call"]
    assert len(calls) == 3 and _seen_when_sent(rec.t_first_token_ns, calls[0])
    assert len(rec.token_times_ns) == 3 and rec.ttfa_s == rec.ttft_s
    assert v1.requests[-1]["tool_choice"] == "required" and v1.requests[-1]["tools"] == [WEATHER]


def test_fragments_without_an_index_and_whole_objects_still_join():
    f = CallFragments()
    f.add({"id": "a", "function": {"name": "f", "arguments": '{"x": '}})
    f.add({"function": {"arguments": "1}"}})
    f.add({"index": 1, "id": "b", "function": {"name": "g", "arguments": {"y": 2}}})
    assert [c.as_dict() for c in f.calls()] == [{"name": "f", "arguments": '{"x": 1}', "id": "a"},
                                                {"name": "g", "arguments": '{"y": 2}', "id": "b"}]


def test_history_with_calls_and_results_in_each_wire_form():
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": '{"city": "P"}',
                                                                 "id": None}]},
            {"role": "tool", "content": "14 C", "name": "get_weather", "tool_call_id": "call_0"}]
    v = v1_messages(msgs)
    assert v[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "P"}'}}]}
    assert v[2] == {"role": "tool", "content": "14 C", "tool_call_id": "call_0", "name": "get_weather"}
    o = wire_messages(msgs)
    assert o[1]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {"city": "P"}}}]
    assert o[2] == {"role": "tool", "content": "14 C", "tool_name": "get_weather", "tool_call_id": "call_0"}


def test_a_turns_verdict_names_the_first_problem():
    tools = Tools((WEATHER,))
    ok = judge({"ok": True, "tool_calls": [ToolCall("get_weather", '{"city": "P"}').as_dict()]}, tools,
               ["get_weather"])
    assert ok["tool_called"] and ok["tool_valid"] and ok["tool_as_expected"] and ok["tool_problem"] is None
    missing = judge({"ok": True, "tool_calls": [ToolCall("get_weather", "{}").as_dict()]}, tools, [])
    assert missing["tool_valid"] is False and "'city' is a required property" in missing["tool_problem"]
    assert missing["tool_as_expected"] is False
    unknown = judge({"ok": True, "tool_calls": [ToolCall("launch", "{}").as_dict()]}, tools, None)
    assert "did not offer" in unknown["tool_problem"] and unknown["tool_as_expected"] is None
    broken = judge({"ok": True, "tool_calls": [ToolCall("get_weather", '{"city": ').as_dict()]}, tools, None)
    assert "not a JSON object" in broken["tool_problem"]
    text = judge({"ok": True, "text": '<tool_call>{"name": "get_weather"}</tool_call>'}, tools, ["get_weather"])
    assert not text["tool_called"] and text["tool_unparsed"] and text["tool_valid"] is None
    assert judge({"ok": True}, None, None) == {}
    assert looks_like_a_call('{"name": "f", "arguments": {}}') and not looks_like_a_call("Paris is sunny.")


def test_the_builtin_tools_file_offers_tools_results_and_expected_calls():
    convs = read_conversations(BUILTIN / "tools.jsonl")
    assert all(c.tools for c in convs)
    assert any(e == [] for c in convs for e in c.expected_tools)  # a question the dataset answered without a tool
    assert any(c.tool_results for c in convs)
    sg = next(c for c in convs if c.id == "weather-sharegpt")  # LLaMA-Factory's ShareGPT form
    assert sg.system and sg.expected_tools == [["get_weather"], []] and "Oslo" in sg.tool_results["get_weather"][0]


@pytest.mark.parametrize("line,words", [
    ({"tools": "[oops", "messages": [{"role": "user", "content": "q"}]}, "not JSON"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}],
      "messages": [{"role": "user", "content": "q"}]}, "needs a 'name'"),
    ({"tools": [{"name": "f", "parameters": {"type": "objekt"}}], "messages": [{"role": "user", "content": "q"}]},
     "not a valid JSON schema"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": "{}"}}]}]}, "no 'tools' to offer"),
    ({"tools": [{"name": "f"}], "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"function": {"name": "g", "arguments": "{}"}}]}]}, "which 'tools' does not define"),
    ({"tools": [{"name": "f"}], "messages": [{"role": "user", "content": "q"},
                                             {"role": "tool", "content": "r"}]}, "a tool result for no call"),
])
def test_a_bad_tools_line_is_named(tmp_path, line, words):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(line) + "\n")
    with pytest.raises(WorkloadError) as e:
        read_conversations(p)
    assert f"{p}:1" in str(e.value) and words in str(e.value)


def test_tool_parameters_are_checked():
    with pytest.raises(ValueError, match="tool_choice is used only with kind dataset or sessions"):
        WorkloadParams(kind="synthetic", tool_choice="auto")
    with pytest.raises(ValueError, match="max_tool_rounds is used only with kind sessions"):
        WorkloadParams(kind="dataset", file="builtin:tools", max_tool_rounds=2)
    assert read_definitions([{"name": "f"}], "x")[0]["function"]["parameters"] == {"type": "object", "properties": {}}


def _run_sessions(backend, tmp_path, model: str, **wl):
    store = RunStore(tmp_path / "store")
    runner = Runner(backend, store, timeout_s=30, progress=False)
    w = Workload(WorkloadParams(kind="sessions", file="builtin:tools", **wl), tmp_path, 0, store.nonce())
    n = sum(len(c.questions) for c in read_conversations(BUILTIN / "tools.jsonl"))
    return runner.sessions(model, 2, n, series="tools/u2", workload=w, sampling=Sampling(num_predict=8))


@pytest.mark.parametrize("server", ["ollama", "v1"])
def test_a_session_with_tools_answers_each_call_and_goes_on(server, ollama, v1, tmp_path):
    fake = ollama if server == "ollama" else v1
    backend = OllamaBackend(fake.url) if server == "ollama" else OpenAIBackend(fake.url)
    before = len(fake.requests)
    df = _run_sessions(backend, tmp_path, "tool-caller")
    sent = [r for r in fake.requests[before:] if r.get("messages")]
    convs = {c.id: c for c in read_conversations(BUILTIN / "tools.jsonl")}
    assert df["ok"].all()
    # every question: first a turn the server answers with a call, then perfkit's answer to it, then the next question
    q, t = df[df["turn_kind"] == "question"], df[df["turn_kind"] == "tool_result"]
    assert len(q) == sum(len(c.questions) for c in convs.values()) and len(t) == len(q)
    assert q["tool_called"].all() and q["tool_valid"].all() and not t["tool_called"].any()
    assert (q["tool_names"] == q["conversation"].map(lambda c: convs[c].tools[0]["function"]["name"])).all()
    # as expected only where the dataset's own answer called that same tool
    exp = [convs[r.conversation].expected_tools[r.question] == [r.tool_names] for r in q.itertuples()]
    assert q["tool_as_expected"].tolist() == exp and any(exp) and not all(exp)
    # the tool result sent is the file's own (its first for that tool), tied to the call
    for r in t.itertuples():
        conv = convs[r.conversation]
        name = conv.tools[0]["function"]["name"]
        assert r.tool_result_source == ("file" if conv.tool_results.get(name) else "stand-in")
    results = [m for s in sent for m in s["messages"] if m["role"] == "tool"]
    assert results and all((m.get("tool_name") if server == "ollama" else m.get("tool_call_id")) for m in results)
    file_results = {x for c in convs.values() for v in c.tool_results.values() for x in v}
    assert any(m["content"] in file_results for m in results)
    assert any('"stand-in result' in m["content"] for m in results) == any(
        not c.tool_results.get(c.tools[0]["function"]["name"]) for c in convs.values())
    # the conversation went on: a later question carries the call and its result in its history
    later = [s for s in sent if sum(m["role"] == "user" for m in s["messages"]) > 1]
    assert later and all(any(m["role"] == "tool" for m in s["messages"]) for s in later)
    assert (df.groupby("conversation")["turn"].max() + 1 == df.groupby("conversation").size()).all()


def test_a_server_that_keeps_calling_is_cut_after_max_tool_rounds(v1, tmp_path):
    df = _run_sessions(OpenAIBackend(v1.url), tmp_path, "tool-caller", tool_choice="required", max_tool_rounds=0)
    assert (df["turn_kind"] == "question").all() and df["tool_rounds_cut"].fillna(False).all()
    assert all(r.get("tool_choice") == "required" for r in v1.requests[-len(df):])


@pytest.mark.parametrize("model,problem", [("tool-caller-bad", "not a JSON object"), ("tool-text", None)])
def test_bad_and_unparsed_calls_are_counted(v1, tmp_path, model, problem):
    df = _run_sessions(OpenAIBackend(v1.url), tmp_path, model)
    q = df[df["turn_kind"] == "question"]
    if problem:
        assert q["tool_called"].all() and not q["tool_valid"].any()
        assert q["tool_problem"].str.contains(problem).all()
    else:
        assert not q["tool_called"].any() and q["tool_unparsed"].all()
        assert (df["turn_kind"] == "question").all()  # no call, nothing to answer: the next question follows


def _page(run, name: str) -> str:
    import html as htmllib
    import re

    t = re.sub(r"<(style|script).*?</\1>", "", (run / f"{name}.html").read_text(), flags=re.S)
    return htmllib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", t)))


def _perfkit_run(tmp_path, params: str):
    from perfkit.cli import main

    p = tmp_path / "p.yaml"
    p.write_text(params)
    assert main(["run", str(p), "--results", str(tmp_path / "results")]) == 0
    (run,) = [d for d in (tmp_path / "results").iterdir() if (d / "run.json").exists()]
    return run


def test_the_workload_study_reports_tool_turns(tmp_path, fake_ollama):
    run = _perfkit_run(tmp_path, f"name: tools\nbackend: {{kind: ollama, url: '{fake_ollama.url}'}}\n"
                                 "studies:\n  workload:\n    model: tool-caller\n    users: [2]\n    requests: 11\n"
                                 "    num_predict: 8\n    workload: {kind: sessions, file: 'builtin:tools'}\n")
    figs = {f["key"]: f for f in json.loads((run / "workload" / "figures.json").read_text())["figures"]}
    assert figs["workload/tool_called/defaults/2"]["estimate"]["value"] == 1.0
    assert figs["workload/tool_valid/defaults/2"]["estimate"]["value"] == 1.0
    assert 0 < figs["workload/tool_as_expected/defaults/2"]["estimate"]["value"] < 1
    assert figs["workload/ttft/defaults/2/answering a tool's result"]["estimate"]["n"] >= 11
    page = _page(run, "workload")
    assert "Tool calls" in page and "the server called a tool on 11 of 11 questions it answered" in page
    assert "turns answering a tool's result had TTFT" in page and "Traceback" not in page


def test_the_workload_study_compares_thinking_on_and_off_without_a_restart(tmp_path, fake_ollama):
    run = _perfkit_run(tmp_path, f"name: think\nbackend: {{kind: ollama, url: '{fake_ollama.url}'}}\n"
                                 "studies:\n  workload:\n    model: thinker\n    users: [1]\n    requests: 6\n"
                                 "    num_predict: 8\n    settings: [{think: false}, {think: true}]\n"
                                 "    workload: {kind: sessions, file: 'builtin:chat', max_turns: 2}\n")
    figs = {f["key"]: f for f in json.loads((run / "workload" / "figures.json").read_text())["figures"]}
    assert "workload/ttfa/think=true/1" in figs and "workload/ttfa/think=false/1" not in figs
    assert figs["workload/thinking_tokens/think=true/1"]["estimate"]["value"] == 3
    page = _page(run, "workload")
    assert "the model thought before answering" in page and "No conversation of this workload offered tools" in page
    assert "as late as on think=false (later)" in page
    events = [json.loads(x) for x in (run / "workload" / "events.jsonl").read_text().splitlines()]
    assert not any(e["kind"] == "restart" for e in events)


@pytest.mark.notebooks
def test_tool_calls_and_thinking_on_the_engine(tmp_path):
    """The real engine with perfkit's chat template: the server parses the calls the model writes, perfkit answers
    them and the conversations go on; asked to think, the model's <think> block comes back apart as thinking."""
    run = _perfkit_run(tmp_path, "name: agent\nbackend: {kind: embedded, settings: {num_thread: 2}}\n"
                                 "studies:\n  workload:\n    model: smollm2-135m-q8_0\n    users: [1]\n"
                                 "    requests: 5\n    num_predict: 32\n    temperature: 0\n"
                                 "    settings: [{chat_template: 'builtin:agent'}]\n"
                                 "    workload: {kind: sessions, file: 'builtin:tools', sample: 2, max_tool_rounds: 1}\n"
                                 "  config_tuning:\n    model: smollm2-135m-q8_0\n    concurrency: [1]\n"
                                 "    requests: 6\n    num_predict: 32\n    prompt_words: 8\n"
                                 "    settings: [{chat_template: 'builtin:agent', think: false},\n"
                                 "               {chat_template: 'builtin:agent', think: true},\n"
                                 "               {chat_template: 'builtin:agent', think: true, reasoning_budget: 4}]\n")
    trials = [json.loads(x) for x in (run / "workload" / "trials.jsonl").read_text().splitlines()]
    q = [t for t in trials if t.get("turn_kind") == "question"]
    answered = [t for t in trials if t.get("turn_kind") == "tool_result"]
    # a turn fails only where the server could not parse the call the model wrote (and that is counted)
    assert q and all(t["ok"] or t["tool_unparsed"] for t in trials), [t.get("error") for t in trials]
    called = [t for t in q if t["tool_called"]]
    assert called, [t["text"] for t in q]  # the model's own calls, parsed by the server
    assert all(c["name"] in {"get_weather", "calculate", "search_docs", "get_order"} for t in called
               for c in t["tool_calls"])
    assert len(answered) == len(called)  # each call answered with the file's result ...
    goes_on = [t for t in q if t["question"] > 0 and any(
        a["conversation"] == t["conversation"] and a["session"] == t["session"] and a["turn"] < t["turn"]
        for a in answered)]
    assert goes_on or not any(a["ok"] for a in answered)  # ... and the conversation went on
    page = _page(run, "workload")
    assert "the server called a tool on" in page
    ct = [json.loads(x) for x in (run / "config_tuning" / "trials.jsonl").read_text().splitlines()]
    thought = [t for t in ct if t.get("think_requested") == "true" and t.get("ok") and t.get("mode") == "closed"]
    plain = [t for t in ct if t.get("think_requested") == "false" and t.get("ok") and t.get("mode") == "closed"]
    assert thought and all(t["thinking_tokens"] > 0 for t in thought)
    assert plain and all(t["thinking_tokens"] == 0 for t in plain)
    # a thinking budget (the engine's --reasoning-budget, a server setting) ends the thought: the answer follows
    budget = [t for t in thought if t["config"].endswith("reasoning_budget=4")]
    assert budget and all(t["thinking_tokens"] <= 5 for t in budget)
    assert sum(t["answer_tokens"] > 0 for t in budget) >= len(budget) - 1
    assert all(t["ttfa_s"] > t["ttft_s"] for t in budget if t["answer_tokens"])


def test_config_tuning_on_a_dataset_with_tools_says_how_the_server_used_them(tmp_path, fake_openai):
    run = _perfkit_run(tmp_path, f"name: dtools\nbackend: {{kind: openai, url: '{fake_openai.url}'}}\n"
                                 "studies:\n  config_tuning:\n    model: tool-caller-bad\n    settings: [{}]\n    concurrency: [2]\n"
                                 "    requests: 6\n    num_predict: 8\n"
                                 "    workload: {kind: dataset, file: 'builtin:tools', tool_choice: required}\n")
    trials = [json.loads(x) for x in (run / "config_tuning" / "trials.jsonl").read_text().splitlines()]
    closed = [t for t in trials if t.get("mode") == "closed"]
    assert closed and all(t["tool_called"] and t["tool_valid"] is False for t in closed)
    assert all(t["turn_kind"] == "question" for t in closed)
    page = _page(run, "config_tuning")
    assert "Tools (each request offered" in page and "turns with calls had valid arguments" in page
    assert "arguments are not a JSON object" in page


def test_a_call_the_server_cannot_parse_fails_the_turn_and_is_counted(v1, tmp_path):
    df = _run_sessions(OpenAIBackend(v1.url), tmp_path, "tool-parse-500")
    assert not df["ok"].any() and df["tool_unparsed"].all()
    assert df["tool_problem"].str.contains("could not parse the tool call").all()
    assert (df["turn"] == 0).all()  # a failed turn ends its conversation
    from perfkit.analysis import toolturns

    t = toolturns.table(df[df["ok"]], df, ["users"])
    assert int(t["parse_failed"].sum()) == len(df)
    line = toolturns.lines(t, df[df["ok"]], ["users"], lambda k: "x")
    assert f"could not parse {len(df)} tool calls" in line[0], line


@pytest.mark.parametrize("model,study,words", [
    ("good", "think", "studies.config_tuning asks it to think, and the server says 'good' cannot"),
    ("good", "tools", "studies.config_tuning.workload.file offers it tools, and the server says 'good' cannot"),
])
def test_a_model_the_server_says_cannot_think_or_call_tools_is_refused_before_anything_runs(tmp_path, fake_ollama,
                                                                                              model, study, words,
                                                                                              capsys):
    from perfkit.cli import main

    extra = ("    settings: [{think: true}]\n" if study == "think" else
             "    settings: [{}]\n    workload: {kind: dataset, file: 'builtin:tools'}\n")
    p = tmp_path / "p.yaml"
    p.write_text(f"name: caps\nbackend: {{kind: ollama, url: '{fake_ollama.url}'}}\nstudies:\n  config_tuning:\n"
                 f"    model: {model}\n    concurrency: [1]\n    requests: 2\n" + extra)
    before = len([r for r in fake_ollama.requests if r.get("messages")])
    assert main(["run", str(p), "--results", str(tmp_path / "results")]) == 2
    assert len([r for r in fake_ollama.requests if r.get("messages")]) == before  # nothing was sent
    err = capsys.readouterr().err
    assert words in err and "its capabilities: completion" in err and "Traceback" not in err


def test_perfkit_compare_compares_tool_figures_of_two_runs(tmp_path, fake_ollama):
    from perfkit.cli import main

    params = (f"name: t\nbackend: {{kind: ollama, url: '{fake_ollama.url}'}}\nstudies:\n  workload:\n"
              "    model: tool-caller\n    users: [1]\n    requests: 11\n    num_predict: 8\n"
              "    workload: {kind: sessions, file: 'builtin:tools'}\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = _perfkit_run(tmp_path / "a", params), _perfkit_run(tmp_path / "b", params)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    out = tmp_path / "cmp" / "comparison.json"
    rows = {r["key"]: r for r in json.loads(out.read_text())["rows"]}
    for key in ("workload/tool_called/defaults/1", "workload/tool_valid/defaults/1",
                "workload/ttft/defaults/1/answering a tool's result"):
        assert rows[key]["verdict"] == "no detectable change at this n", rows[key]
