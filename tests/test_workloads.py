"""Traffic like the users': datasets in both file forms, chat sessions carrying the server's own answers, shared
prefixes, traces and bursty arrivals; malformed files named by line before anything runs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from perfkit.core.errors import ConfigError
from perfkit.core.prompts import prompt_for
from perfkit.measure.runner import schedule
from perfkit.workloads import (WorkloadError, WorkloadParams, check, conversations, read_conversations, read_trace,
                               single_turn)

SHAREGPT = [
    {"id": "a", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Q1 of a?"},
                                  {"from": "gpt", "value": "one two three four five six"},
                                  {"from": "human", "value": "Q2 of a?"}, {"from": "gpt", "value": "x"}]},
    {"id": "b", "conversations": [{"from": "human", "value": "Q1 of b, a longer first question here?"},
                                  {"from": "gpt", "value": "y"}]},
]
OPENAI = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"},
                        {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "And then?"}]}]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_both_file_forms_read_as_conversations(tmp_path):
    s = read_conversations(_jsonl(tmp_path / "s.jsonl", SHAREGPT))
    assert [c.id for c in s] == ["a", "b"]
    assert s[0].system == "Be brief." and s[0].questions == ["Q1 of a?", "Q2 of a?"]
    assert s[0].answers == ["one two three four five six", "x"] and s[1].system is None
    (o,) = read_conversations(_jsonl(tmp_path / "o.jsonl", OPENAI))
    assert o.system == "Be brief." and o.questions == ["Hello?", "And then?"] and o.answers == ["Hi.", None]


@pytest.mark.parametrize("bad, line, words", [
    ('{"conversations": [{"from": "human", "value": "q"}]}\n{not json', 2, "not JSON"),
    ('{"messages": [{"role": "robot", "content": "q"}]}', 1, "robot"),
    ('{"conversations": [{"from": "gpt", "value": "an answer first"}]}', 1, "answer before any question"),
    ('{"conversations": [{"from": "system", "value": "only a system prompt"}]}', 1, "no user"),
    ('{"turns": []}', 1, "neither 'conversations'"),
    ('{"messages": [{"role": "user"}]}', 1, "needs 'role' and 'content'"),
    ('[1, 2]', 1, "expected an object"),
])
def test_a_malformed_conversation_file_is_named_by_line(tmp_path, bad, line, words):
    p = tmp_path / "bad.jsonl"
    p.write_text(bad + "\n")
    with pytest.raises(WorkloadError) as e:
        read_conversations(p)
    assert f"bad.jsonl:{line}:" in str(e.value) and words in str(e.value), str(e.value)


def test_an_empty_file_and_a_missing_one_are_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(WorkloadError, match="no conversation"):
        read_conversations(tmp_path / "empty.jsonl")
    w = WorkloadParams(kind="dataset", file="nope.jsonl")
    with pytest.raises(WorkloadError, match=r"studies.x.workload.file: .*nope.jsonl does not exist"):
        check(w, tmp_path, "studies.x.workload")


def test_traces_in_csv_and_jsonl_with_dates_and_aliases(tmp_path):
    (tmp_path / "t.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                    "2023-11-16 18:15:46.5,100,20\n2023-11-16 18:15:47.0,50,10\n")
    rows = read_trace(tmp_path / "t.csv")
    assert [(r.t_s, r.input_tokens, r.output_tokens) for r in rows] == [(0.0, 100, 20), (0.5, 50, 10)]
    _jsonl(tmp_path / "t.jsonl", [{"timestamp": 10, "input_tokens": 8, "output_tokens": 4},
                                  {"timestamp": 12.5, "input_tokens": 9, "output_tokens": 5}])
    assert [r.t_s for r in read_trace(tmp_path / "t.jsonl")] == [0.0, 2.5]


@pytest.mark.parametrize("text, words", [
    ("timestamp,input_tokens,output_tokens\n1,10,5\n0.5,10,5\n", "t.csv:3: its time is before"),
    ("timestamp,input_tokens\n1,10\n", "t.csv:2: no output_tokens"),
    ("timestamp,input_tokens,output_tokens\n1,ten,5\n", "t.csv:2: input tokens 'ten' is not a number"),
    ("timestamp,input_tokens,output_tokens\n1,10,0\n", "must be a whole number ≥ 1"),
    ("timestamp,input_tokens,output_tokens\nyesterday-ish,10,5\n", "neither seconds nor a date-time"),
])
def test_a_malformed_trace_is_named_by_line(tmp_path, text, words):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(WorkloadError) as e:
        read_trace(tmp_path / "t.csv")
    assert words in str(e.value), str(e.value)


def test_synthetic_requests_are_the_prompts_perfkit_always_sent():
    (r,) = single_turn(WorkloadParams(), 1, key="s/a0", seed=0, nonce="n", prompt_words=20)
    assert r.messages == [{"role": "user", "content": prompt_for("s/a0/0", 20, "n")}]


def test_dataset_requests_send_first_questions_with_their_system_prompt_and_cap_output(tmp_path):
    _jsonl(tmp_path / "d.jsonl", SHAREGPT)
    w = WorkloadParams(kind="dataset", file="d.jsonl", output="dataset")
    reqs = single_turn(w, 4, key="k", seed=1, nonce="n", prompt_words=20, base_dir=tmp_path)
    firsts = {r.tags["conversation"]: r for r in reqs}
    assert firsts["a"].messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1 of a?"}]
    assert firsts["a"].num_predict == 8  # six words of the dataset's answer ≈ 8 tokens
    # every conversation before any repeats, in an order the seed fixes
    assert sorted(r.tags["conversation"] for r in reqs[:2]) == ["a", "b"]
    assert [r.tags["conversation"] for r in reqs] == \
        [r.tags["conversation"] for r in single_turn(w, 4, key="k", seed=1, nonce="n", prompt_words=20,
                                                     base_dir=tmp_path)]
    short = WorkloadParams(kind="dataset", file="d.jsonl", max_words=4)
    assert {r.tags["conversation"] for r in single_turn(short, 3, key="k", seed=1, nonce="n", prompt_words=20,
                                                        base_dir=tmp_path)} == {"a"}


def test_shared_prefix_requests_share_exactly_their_prefix():
    w = WorkloadParams(kind="shared_prefix", prefix_words=60, prefixes=2)
    reqs = single_turn(w, 6, key="k", seed=0, nonce="run1", prompt_words=16)
    systems = [r.messages[0]["content"] for r in reqs]
    assert len(set(systems)) == 2 and systems[0] == systems[2] == systems[4]
    assert len(systems[0].split()) == 60
    assert len({r.messages[1]["content"] for r in reqs}) == 6  # the questions never repeat
    other_run = single_turn(w, 1, key="k", seed=0, nonce="run2", prompt_words=16)
    assert other_run[0].messages[0]["content"] != systems[0]  # no cache from an earlier run


def test_a_trace_gives_arrivals_and_lengths_time_scaled(tmp_path):
    (tmp_path / "t.csv").write_text("timestamp,input_tokens,output_tokens\n0,40,8\n1,80,16\n3,40,4\n")
    w = WorkloadParams(kind="trace", file="t.csv", time_scale=2)
    reqs = single_turn(w, 3, key="k", seed=0, nonce="n", prompt_words=16, base_dir=tmp_path)
    assert [r.offset_s for r in reqs] == [0.0, 0.5, 1.5]
    assert [r.num_predict for r in reqs] == [8, 16, 4]
    assert len(reqs[1].messages[0]["content"].split()) == 60  # 80 tokens ≈ 60 words


def test_the_builtin_files_are_well_formed():
    convs = read_conversations(Path(__file__).resolve().parent.parent / "perfkit/workloads/data/chat.jsonl")
    assert len(convs) >= 12 and all(len(c.questions) >= 2 for c in convs)
    assert len({c.system for c in convs}) == 1  # one assistant: one shared system prompt
    chosen = conversations(WorkloadParams(kind="sessions", file="builtin:chat", max_turns=3), 10, key="k", seed=0)
    assert sum(len(c.questions) for c in chosen) >= 10 and all(len(c.questions) <= 3 for c in chosen)


def test_gamma_arrivals_keep_the_rate_and_burstiness_sets_their_spread():
    def gaps(b):
        t = schedule("gamma", 10.0, 4000, seed=3, burstiness=b)
        return [y - x for x, y in zip(t, t[1:])]

    for b in (0.25, 1.0, 4.0):
        g = gaps(b)
        assert statistics.mean(g) == pytest.approx(0.1, rel=0.08)
        cv = statistics.pstdev(g) / statistics.mean(g)
        assert cv == pytest.approx(b ** -0.5, rel=0.15)  # a gamma's CV is 1/sqrt(shape)


@pytest.mark.parametrize("section, words", [
    ({"model": "m", "settings": [{}], "rates_rps": [2], "workload": {"kind": "sessions", "file": "builtin:chat"}},
     "rates_rps"),
    ({"model": "m", "settings": [{}], "workload": {"kind": "dataset"}}, "needs a file"),
    ({"model": "m", "settings": [{}], "workload": {"kind": "dataset", "file": "x.jsonl", "max_turns": 2}},
     "max_turns is used only with kind sessions"),
    ({"model": "m", "settings": [{}], "workload": {"kind": "synthetic", "file": "x.jsonl"}}, "file is used only"),
    ({"model": "m", "settings": [{}], "burstiness": 0.5}, "burstiness is used only with arrivals: gamma"),
])
def test_config_tuning_workload_parameters_are_checked(tmp_path, section, words):
    from perfkit.studies.params import load
    import yaml

    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "studies": {"config_tuning": section}}))
    with pytest.raises(ConfigError) as e:
        load(p, check_models=False)
    assert words in str(e.value) and "p.yaml" in str(e.value), str(e.value)


def test_the_workload_study_takes_sessions_only(tmp_path):
    from perfkit.studies.params import load

    p = tmp_path / "p.yaml"
    p.write_text("name: t\nstudies: {workload: {model: m, workload: {kind: dataset, file: 'builtin:chat'}}}\n")
    with pytest.raises(ConfigError, match="workload kind sessions"):
        load(p, check_models=False)


def test_preflight_names_the_bad_line_of_a_workload_file(tmp_path):
    from perfkit.run.preflight import check_workloads
    from perfkit.studies.params import load

    (tmp_path / "chats.jsonl").write_text(json.dumps(SHAREGPT[0]) + "\n{oops\n")
    p = tmp_path / "p.yaml"
    p.write_text("name: t\nstudies: {workload: {model: m, workload: {kind: sessions, file: chats.jsonl}}}\n")
    (problem,) = check_workloads(load(p, check_models=False), p, ["workload"])
    assert problem.startswith("studies.workload.workload.file:") and "chats.jsonl:2: not JSON" in problem


def test_a_relative_workload_file_is_found_from_a_run_directorys_copy(tmp_path):
    from perfkit.run.rundir import write_params_copy

    (tmp_path / "in").mkdir()
    _jsonl(tmp_path / "in" / "d.jsonl", SHAREGPT)
    p = tmp_path / "in" / "p.yaml"
    p.write_text("name: t\nstudies: {config_tuning: {model: m, settings: [{}], workload: {kind: dataset, file: d.jsonl}}}\n")
    (tmp_path / "run").mkdir()
    copy = write_params_copy(p, tmp_path / "run")
    import yaml

    f = yaml.safe_load(copy.read_text())["studies"]["config_tuning"]["workload"]["file"]
    assert Path(f).is_absolute() and Path(f).read_text().startswith('{"id": "a"')


# ---- chat sessions against the scripted Ollama (real processes) --------------------------------------------------

def test_sessions_carry_each_conversations_questions_and_the_servers_own_answers(tmp_path, scripted_models_dir):
    """Each turn sends the conversation's next question after the whole history, whose assistant turns are what
    the server answered before (its truth), never the dataset's answers; a history over the context is flagged."""
    from scripted_ollama.harness import ScriptedOllama
    from perfkit.client.backends import Sampling
    from perfkit.kinds.ollama import OllamaBackend
    from perfkit.core.store import RunStore
    from perfkit.measure.runner import Runner
    from perfkit.measure.workload import Workload

    _jsonl(tmp_path / "chats.jsonl", SHAREGPT + OPENAI)
    with ScriptedOllama(tmp_path / "ollama", models_dir=scripted_models_dir) as so:
        be = OllamaBackend(so.url)
        store = RunStore(tmp_path / "store")
        runner = Runner(be, store, timeout_s=60, progress=False)
        w = Workload(WorkloadParams(kind="sessions", file="chats.jsonl"), tmp_path, 0, store.nonce(),
                     context_tokens=40)
        df = runner.sessions("tiny", 2, 5, series="s/u2", workload=w, sampling=Sampling(num_predict=6))
        truth = [t for t in so.truth() if t.get("kind") == "generate" and t.get("messages")]
        be.close()
    assert len(df) == 5 and df["ok"].all()
    by_conv = {c.id: c for c in read_conversations(tmp_path / "chats.jsonl")}
    sent = {t["messages"][-1]["content"]: t for t in truth}
    for _, row in df.iterrows():
        conv = by_conv[row["conversation"]]
        q = conv.questions[row["turn"]]
        t = next(v for k, v in sent.items() if k.endswith(q))  # the first question carries the run's tag
        msgs = [m for m in t["messages"] if m["role"] != "system"]
        assert [m["content"] for m in msgs if m["role"] == "user"][-1].endswith(q)
        assert len(msgs) == 2 * row["turn"] + 1  # the whole history, then the question
        # every assistant turn is an answer the server gave earlier in this conversation, not the dataset's
        answers = [m["content"] for m in msgs if m["role"] == "assistant"]
        assert all(a in {x["output"] for x in truth} for a in answers)
        assert not set(answers) & {a for a in conv.answers if a}
    # The prompt's size is estimated before sending (from the server's counts of the turn before) and grows with
    # the history; over the context it is flagged, and still sent: what the server does then is the finding.
    assert (df["over_context"] == (df["est_prompt_tokens"] > 40)).all()
    for _, g in df.groupby("conversation"):
        est_by_turn = g.sort_values("turn")["est_prompt_tokens"].tolist()
        assert est_by_turn == sorted(est_by_turn) and len(set(est_by_turn)) == len(est_by_turn)
    assert not df[df["turn"] == 0]["over_context"].any() and df[df["turn"] > 0]["over_context"].any()


@pytest.mark.engine
def test_a_history_that_outgrows_the_engines_context_is_flagged_and_the_servers_answer_recorded(tmp_path, store_dir):
    """On the real engine with a 256-token context: the conversation grows past it; perfkit flags the turn before
    sending it, sends it anyway, and records what llama-server does (it refuses a prompt over its context)."""
    from perfkit.kinds.llamacpp import LlamaServerBackend
    from perfkit.client.backends import Sampling
    from perfkit.core.store import RunStore
    from perfkit.measure.runner import Runner
    from perfkit.measure.workload import Workload
    from perfkit.kinds.llamacpp.engine import Engine

    words = " ".join(["Please explain in detail, with the reasons and an example,"] * 5)
    conv = {"conversations": [x for k in range(6) for x in
                              ({"from": "human", "value": f"Question {k}: {words}?"}, {"from": "gpt", "value": "ok"})]}
    _jsonl(tmp_path / "long.jsonl", [conv])
    with Engine(store_dir, {"num_thread": 2, "OLLAMA_CONTEXT_LENGTH": 256, "OLLAMA_NUM_PARALLEL": 1}) as e:
        be = LlamaServerBackend.from_engine(e)
        be.load("smollm2-135m-q4_1")
        ctx = be.control.slots("smollm2-135m-q4_1")["n_ctx_per_slot"]
        store = RunStore(tmp_path / "store")
        runner = Runner(be, store, timeout_s=120, progress=False)
        w = Workload(WorkloadParams(kind="sessions", file="long.jsonl"), tmp_path, 0, store.nonce(), int(ctx))
        df = runner.sessions("smollm2-135m-q4_1", 1, 6, series="long/u1", workload=w,
                             sampling=Sampling(num_predict=24))
        be.close()
    assert ctx == 256
    first_over = df[df["over_context"]].sort_values("turn").iloc[0]
    assert first_over["turn"] >= 1 and not df[df["turn"] < first_over["turn"]]["over_context"].any()
    assert df[df["turn"] < first_over["turn"]]["ok"].all()
    # Over the context, llama-server refuses the prompt: the turn is a failure naming it, and the conversation ends.
    assert not first_over["ok"] and "context" in str(first_over["error"]).lower(), first_over["error"]
    assert df["turn"].max() == first_over["turn"]


@pytest.mark.notebooks
def test_config_tuning_and_the_workload_study_hold_chat_sessions_with_an_ollama(tmp_path, scripted_models_dir):
    """`perfkit run` with config tuning on a sessions workload and the workload study, against the scripted Ollama:
    the server sees each conversation's own questions with histories of its own answers; both reports publish."""
    import html as htmllib
    import re

    from conftest import perfkit_run
    from scripted_ollama.harness import ScriptedOllama

    sessions = {"kind": "sessions", "file": "builtin:chat", "max_turns": 3}
    with ScriptedOllama(tmp_path / "ollama", models_dir=scripted_models_dir, env={"OLLAMA_NUM_PARALLEL": "2"}) as so:
        params = {"name": "chats", "backend": {"kind": "ollama", "url": so.url},
                  "studies": {"config_tuning": {"model": "tiny", "settings": [{}], "concurrency": [2], "requests": 6,
                                                "num_predict": 8, "workload": sessions},
                              "workload": {"model": "tiny", "users": [1, 2], "requests": 6, "num_predict": 8,
                                           "workload": sessions}}}
        run_dir = perfkit_run(params, tmp_path, name="chats.yaml", timeout_s=600)
        # the chats (every built-in conversation has the assistant's system prompt; priming requests have none)
        truth = [t for t in so.truth() if t.get("kind") == "generate"
                 and any(m["role"] == "system" for m in t.get("messages") or [])]
    info = json.loads((run_dir / "run.json").read_text())
    assert {s: v["status"] for s, v in info["studies"].items()} == {"config_tuning": "done", "workload": "done"}
    questions = {q for c in read_conversations(Path(__file__).resolve().parent.parent /
                                               "perfkit/workloads/data/chat.jsonl") for q in c.questions}
    outputs = {t["output"] for t in truth}
    assert len(truth) >= 6 + 2 * 6
    later = [t for t in truth if sum(m["role"] == "user" for m in t["messages"]) > 1]
    assert later, "no turn carried a history"
    for t in truth:
        users = [m["content"] for m in t["messages"] if m["role"] == "user"]
        assert all(any(u.endswith(q) for q in questions) for u in users)  # the dataset's own questions
        assert all(m["content"] in outputs for m in t["messages"] if m["role"] == "assistant")  # the server's answers
    page = htmllib.unescape(re.sub(r"<[^>]+>", " ", (run_dir / "workload.html").read_text()))
    assert "TTFT by turn" in page and "Traceback" not in page
    assert "not counted by this server" in page  # Ollama does not say how much of a prompt it had cached
    ct = [json.loads(x) for x in (run_dir / "config_tuning" / "trials.jsonl").read_text().splitlines()]
    assert {r.get("workload") for r in ct if r.get("mode") == "closed"} == {"sessions"}
    assert max(r["turn"] for r in ct if "turn" in r) >= 1
