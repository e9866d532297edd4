"""The codec: round trips, a table of hostile inputs, signatures, and property tests."""

from __future__ import annotations

import copy
import gzip
import hashlib
import hmac
import json
import math
import tracemalloc
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sapo_core import codec
from sapo_core.codec import DEFAULT_LIMITS, Limits, PayloadError
from sapo_core.errors import PayloadError as ErrorsPayloadError
from sapo_core.records import SCHEMA_VERSION, Completion, Group, Message, Problem, RoundPayload

SECRET = "swarm-secret"


# ------------------------------------------------------------------------------ fixtures


def make_payload(**changes: Any) -> RoundPayload:
    """A small but complete payload: every optional field used somewhere, one empty group node."""
    p1 = Problem(
        task="arithmetic",
        id="arith-17",
        messages=[Message("system", "Answer in <answer></answer> tags."), Message("user", "2+3*4 = ?")],
        answer="14",
        metadata={"difficulty": 2, "ops": ["+", "*"]},
    )
    p2 = Problem(
        task="json-task",
        id="j/1",
        messages=[{"role": "user", "content": "héllo 🌍 \u202e\x00 tab\t"}],
        answer={"values": [1, 2.5, None, True, "x"], "nested": {"k": [[1], []]}},
    )
    g1 = Group(
        problem=p1,
        completions=[
            Completion("<answer>14</answer>", "stop", 6, (1, 2, 3), (-0.1, -0.25, -1.5), reasoning="3*4=12, +2"),
            Completion("<answer>20</answer>", "length", 6),
        ],
        rewards=(1.0, 0.0),
        advantages=(0.7071, -0.7071),
    )
    g2 = Group(
        problem=p2,
        completions=[Completion("a", "error", logprobs=(-0.5,)), Completion("b"), Completion("")],
        rewards=(0.5, 0.25, -1.0),
        advantages=(1.0, 0.0, -1.0),
        node="node-b",
    )
    payload = RoundPayload(
        experiment="exp-1",
        round=3,
        node="node-a",
        groups=[g1, g2],
        model="Qwen/Qwen2.5-0.5B-Instruct",
        created_at=1_700_000_000.25,
    )
    return attrs.evolve(payload, **changes)


def filled(p: RoundPayload) -> RoundPayload:
    """What decoding gives back: empty group nodes become the payload's node."""
    return attrs.evolve(p, groups=[attrs.evolve(g, node=g.node or p.node) for g in p.groups])


def base_data() -> dict[str, Any]:
    return json.loads(codec.encode_payload(make_payload()))


def dump(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def _walk(data: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    for key in path[:-1]:
        data = data[key]
    return data, path[-1]


def setp(*path_and_value: Any) -> Callable[[], bytes]:
    """The base payload with the value at ``path`` replaced."""
    *path, value = path_and_value

    def make() -> bytes:
        data = base_data()
        parent, key = _walk(data, tuple(path))
        parent[key] = value
        return dump(data)

    return make


def delp(*path: Any) -> Callable[[], bytes]:
    """The base payload without the key at ``path``."""

    def make() -> bytes:
        data = base_data()
        parent, key = _walk(data, path)
        del parent[key]
        return dump(data)

    return make


def literal(*path_and_text: Any) -> Callable[[], bytes]:
    """The base payload with raw JSON text (e.g. ``NaN``) at ``path``."""
    *path, text = path_and_text
    marker = "@@LITERAL@@"

    def make() -> bytes:
        raw = setp(*path, marker)().decode("utf-8")
        return raw.replace(json.dumps(marker), text, 1).encode("utf-8")

    return make


def raw(blob: bytes) -> Callable[[], bytes]:
    return lambda: blob


def text_sub(old: str, new: str | bytes) -> Callable[[], bytes]:
    """The encoded base payload with the first ``old`` replaced by ``new`` (raw bytes allowed)."""
    new_bytes = new if isinstance(new, bytes) else new.encode("utf-8")
    return lambda: codec.encode_payload(VALID).replace(old.encode("utf-8"), new_bytes, 1)


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


G0, G1 = ("groups", 0), ("groups", 1)
C0 = (*G0, "completions", 0)
P0 = (*G0, "problem")
M0 = (*P0, "messages", 0)
VALID = make_payload()


# ------------------------------------------------------------------------------ round trips


def test_round_trip_plain() -> None:
    p = make_payload()
    back = codec.decode_payload(codec.encode_payload(p))
    assert back == filled(p)
    assert codec.to_data(back) == codec.to_data(p)  # metadata too, which == ignores
    assert back.groups[0].node == "node-a" and back.groups[1].node == "node-b"


def test_round_trip_gz_is_deterministic() -> None:
    p = make_payload()
    blob = codec.write_gz(p)
    assert blob[:2] == b"\x1f\x8b"
    assert blob == codec.write_gz(p)
    assert codec.read_gz(blob) == filled(p)
    assert gzip.decompress(blob) == codec.encode_payload(p)


def test_round_trip_signed() -> None:
    signed = codec.sign_payload(make_payload(), SECRET)
    assert signed.signature is not None and len(signed.signature) == 64
    back = codec.read_gz(codec.write_gz(signed))
    assert back.signature == signed.signature
    codec.verify_signature(back, SECRET)  # group node "" was filled in and still verifies
    codec.verify_signature(signed, SECRET)


def test_encoding_omits_none_optionals_and_writes_the_rest() -> None:
    data = base_data()
    assert "signature" not in data
    c = data["groups"][1]["completions"][1]
    assert c == {"text": "b", "finish_reason": "stop"}
    assert set(data["groups"][0]["completions"][0]) == {
        "text", "finish_reason", "num_tokens", "token_ids", "logprobs", "reasoning",
    }  # fmt: skip
    assert data["schema_version"] == SCHEMA_VERSION


def test_defaults_may_be_omitted_and_optionals_may_be_null() -> None:
    data = {
        "schema_version": SCHEMA_VERSION,
        "experiment": "e",
        "round": 0,
        "node": "n",
        "signature": None,
        "groups": [
            {
                "problem": {"task": "t", "id": "1", "messages": [{"role": "user", "content": "q"}]},
                "completions": [
                    {"text": "x", "num_tokens": None, "token_ids": None, "logprobs": None, "reasoning": None}
                ],
                "rewards": [1],
                "advantages": [0],
            }
        ],
    }
    p = codec.decode_payload(dump(data))
    assert p.model == "" and p.created_at == 0.0 and p.signature is None
    g = p.groups[0]
    assert g.node == "n" and g.problem.answer is None and g.problem.metadata == {}
    assert g.completions[0] == Completion("x")
    assert type(g.rewards[0]) is float and type(g.advantages[0]) is float


def test_int_rewards_are_written_as_floats() -> None:
    # A reward function returning 1 instead of 1.0 must not break the signature after decoding.
    g = attrs.evolve(VALID.groups[0], rewards=(1, 0), advantages=(1, -1))
    p = codec.sign_payload(make_payload(groups=[g]), SECRET)
    data = json.loads(codec.encode_payload(p))
    assert data["groups"][0]["rewards"] == [1.0, 0.0]
    assert b'"rewards":[1.0,0.0]' in codec.encode_payload(p)
    codec.verify_signature(codec.decode_payload(codec.encode_payload(p)), SECRET)


def test_single_records_round_trip() -> None:
    problem = VALID.groups[1].problem
    data = codec.to_data(problem)
    json.dumps(data, allow_nan=False)  # the CLI prints this
    back = codec.problem_from_data(json.loads(json.dumps(data)))
    assert back == problem and back.metadata == problem.metadata
    group = VALID.groups[0]
    back_group = codec.group_from_data(json.loads(json.dumps(codec.to_data(group))))
    assert back_group == group and back_group.node == ""  # no payload to fill it from
    completion = group.completions[0]
    assert codec.completion_from_data(codec.to_data(completion)) == completion
    message = Message("assistant", "hi")
    assert codec.message_from_data(codec.to_data(message)) == message


def test_single_record_error_paths_start_at_the_record() -> None:
    with pytest.raises(PayloadError, match=r"^rewards\[1\]: not a finite number$"):
        codec.to_data(attrs.evolve(VALID.groups[0], rewards=(0.0, math.nan)))
    with pytest.raises(PayloadError, match=r"^completions\[1\]\.text: expected a string"):
        codec.to_data(attrs.evolve(VALID.groups[0], completions=(Completion("a"), Completion(None))))  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match=r"^messages\[0\]\.role: 'bot' is not one of"):
        codec.problem_from_data({"task": "t", "id": "i", "messages": [{"role": "bot", "content": ""}]})
    with pytest.raises(PayloadError, match=r"^token_ids\[1\]: must be >= 0"):
        codec.completion_from_data({"text": "", "token_ids": [0, -1]})


def test_free_json_arrays_decode_as_lists() -> None:
    p = make_payload()
    answer = codec.decode_payload(codec.encode_payload(p)).groups[1].problem.answer
    assert answer == {"values": [1, 2.5, None, True, "x"], "nested": {"k": [[1], []]}}
    assert type(answer["values"]) is list


def test_multi_member_gzip_is_read() -> None:
    blob = codec.encode_payload(make_payload())
    two = gzip.compress(blob[:100]) + gzip.compress(blob[100:])
    assert codec.read_gz(two) == filled(make_payload())


def test_empty_payload_and_large_values_round_trip() -> None:
    p = RoundPayload(experiment="e", round=2**53 - 1, node="n", groups=[], created_at=-1.5e300)
    assert codec.decode_payload(codec.encode_payload(p)) == p


def test_reexported_error_is_the_errors_module_one() -> None:
    assert PayloadError is ErrorsPayloadError
    assert issubclass(PayloadError, ValueError)


def test_limits_validate_themselves() -> None:
    assert Limits() == DEFAULT_LIMITS
    assert DEFAULT_LIMITS.max_payload_bytes == 64 * 1024 * 1024
    for bad in (0, -1, True, 1.5, "3"):
        with pytest.raises(ValueError, match="max_groups"):
            Limits(max_groups=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------- malformed input table

BIG = 10**400
LONG_NODE = "n" * 65

MALFORMED: list[Any] = [
    # --- bytes, encoding, JSON syntax
    pytest.param(raw(b""), "invalid JSON", id="empty"),
    pytest.param(lambda: codec.encode_payload(VALID)[:200], "invalid JSON", id="truncated-json"),
    pytest.param(lambda: codec.encode_payload(VALID)[:-1], "invalid JSON", id="truncated-last-brace"),
    pytest.param(lambda: codec.encode_payload(VALID) + b"{}", "invalid JSON: Extra data", id="trailing-data"),
    pytest.param(raw(b"\x1f\x8b\x08\x00"), "not valid UTF-8", id="gzip-given-to-json-decoder"),
    pytest.param(text_sub('"2+3*4', b'"\xff'), "not valid UTF-8", id="invalid-utf8-byte"),
    pytest.param(raw(b'{"a":"\xed\xa0\x80"}'), "not valid UTF-8", id="utf8-encoded-surrogate"),
    pytest.param(raw(b'{"a":"\xc0\xaf"}'), "not valid UTF-8", id="overlong-utf8"),
    pytest.param(lambda: b"\xef\xbb\xbf" + codec.encode_payload(VALID), "byte order mark", id="utf8-bom"),
    pytest.param(lambda: codec.encode_payload(VALID).decode().encode("utf-16"), "not valid UTF-8", id="utf16"),
    pytest.param(text_sub("2+3*4", "\\ud800"), "lone UTF-16 surrogate", id="lone-surrogate-escape"),
    pytest.param(raw(b"[]"), "top level: expected an object, got array", id="top-array"),
    pytest.param(raw(b'"payload"'), "top level: expected an object, got string", id="top-string"),
    pytest.param(raw(b"null"), "top level: expected an object, got null", id="top-null"),
    pytest.param(raw(b"3"), "top level: expected an object, got integer", id="top-number"),
    pytest.param(raw(b"   "), "invalid JSON", id="whitespace-only"),
    pytest.param(literal(*G0, "rewards", 1, "NaN"), "NaN is not a JSON number", id="nan-literal"),
    pytest.param(literal(*G0, "rewards", 1, "Infinity"), "Infinity is not a JSON number", id="infinity-literal"),
    pytest.param(literal(*G0, "advantages", 0, "-Infinity"), "-Infinity is not a JSON number", id="neg-infinity"),
    pytest.param(literal(*G0, "rewards", 1, "1e999"), "groups[0].rewards[1]: not a finite number", id="1e999-reward"),
    pytest.param(
        literal(*G1, "advantages", 2, "-1e999"), "groups[1].advantages[2]: not a finite number", id="neg-1e999"
    ),
    pytest.param(setp(*G0, "rewards", 0, BIG), "groups[0].rewards[0]: not a finite number", id="huge-int-reward"),
    pytest.param(literal(*C0, "logprobs", 2, "1e999"), "logprobs[2]: not a finite number", id="1e999-logprob"),
    pytest.param(literal("created_at", "1e400"), "created_at: not a finite number", id="1e400-created-at"),
    pytest.param(literal(*P0, "answer", "[1, 1e999]"), "answer[1]: not a finite number", id="1e999-in-answer"),
    pytest.param(
        literal(*P0, "metadata", '{"x": {"y": -1e999}}'), "metadata.x.y: not a finite number", id="1e999-metadata"
    ),
    pytest.param(literal(*P0, "answer", "1" * 5000), "invalid JSON", id="int-literal-5000-digits"),
    pytest.param(text_sub('"round":3', '"round":3,"round":4'), "duplicate key 'round'", id="duplicate-top-key"),
    pytest.param(text_sub('"text":"a"', '"text":"a","text":"b"'), "duplicate key 'text'", id="duplicate-nested-key"),
    pytest.param(raw(b"[" * 100_000 + b"]" * 100_000), "nested too deeply", id="deep-100k-lists"),
    pytest.param(raw(b'{"a":' * 100_000 + b"1" + b"}" * 100_000), "nested too deeply", id="deep-100k-objects"),
    pytest.param(literal(*P0, "answer", "[" * 100_000 + "]" * 100_000), "nested too deeply", id="deep-answer-100k"),
    pytest.param(setp(*P0, "answer", nested(33)), "Limits.max_json_depth", id="answer-depth-33"),
    pytest.param(setp(*P0, "metadata", {"a": nested(32)}), "metadata.a" + "[0]" * 31, id="metadata-depth-33"),
    # --- schema version
    pytest.param(delp("schema_version"), "missing required key 'schema_version'", id="no-schema-version"),
    pytest.param(setp("schema_version", 2), "unsupported version 2; this sapo reads version 1", id="schema-v2"),
    pytest.param(setp("schema_version", 0), "unsupported version 0", id="schema-v0"),
    pytest.param(setp("schema_version", "1"), "schema_version: expected an integer, got string", id="schema-str"),
    pytest.param(setp("schema_version", True), "schema_version: expected an integer, got boolean", id="schema-bool"),
    pytest.param(setp("schema_version", 1.0), "schema_version: expected an integer, got number", id="schema-float"),
    # --- missing and unknown keys, at every level
    pytest.param(delp("experiment"), "missing required key 'experiment'", id="no-experiment"),
    pytest.param(delp("round"), "missing required key 'round'", id="no-round"),
    pytest.param(delp("node"), "missing required key 'node'", id="no-node"),
    pytest.param(delp("groups"), "missing required key 'groups'", id="no-groups"),
    pytest.param(setp("extra", 1), "unknown key 'extra' (allowed: schema_version", id="extra-top-key"),
    pytest.param(setp("Round", 1), "unknown key 'Round'", id="wrong-case-key"),
    pytest.param(delp(*G0, "problem"), "groups[0]: missing required key 'problem'", id="no-group-problem"),
    pytest.param(delp(*G0, "completions"), "groups[0]: missing required key 'completions'", id="no-completions"),
    pytest.param(delp(*G1, "rewards"), "groups[1]: missing required key 'rewards'", id="no-rewards"),
    pytest.param(delp(*G1, "advantages"), "groups[1]: missing required key 'advantages'", id="no-advantages"),
    pytest.param(setp(*G1, "weights", []), "groups[1]: unknown key 'weights'", id="extra-group-key"),
    pytest.param(delp(*P0, "task"), "groups[0].problem: missing required key 'task'", id="no-task"),
    pytest.param(delp(*P0, "id"), "groups[0].problem: missing required key 'id'", id="no-problem-id"),
    pytest.param(delp(*P0, "messages"), "groups[0].problem: missing required key 'messages'", id="no-messages"),
    pytest.param(setp(*P0, "prompt", "x"), "groups[0].problem: unknown key 'prompt'", id="extra-problem-key"),
    pytest.param(delp(*C0, "text"), "groups[0].completions[0]: missing required key 'text'", id="no-text"),
    pytest.param(setp(*C0, "score", 1), "groups[0].completions[0]: unknown key 'score'", id="extra-completion-key"),
    pytest.param(delp(*M0, "role"), "messages[0]: missing required key 'role'", id="no-role"),
    pytest.param(delp(*M0, "content"), "messages[0]: missing required key 'content'", id="no-content"),
    pytest.param(setp(*M0, "name", "bob"), "messages[0]: unknown key 'name'", id="extra-message-key"),
    pytest.param(lambda: dump({**base_data(), "a": 1, "b": 2}), "unknown keys 'a', 'b'", id="two-unknown-keys"),
    # --- wrong types
    pytest.param(setp("round", True), "round: expected an integer, got boolean", id="bool-round"),
    pytest.param(setp("round", 3.0), "round: expected an integer, got number", id="float-round"),
    pytest.param(setp("round", "3"), "round: expected an integer, got string", id="string-round"),
    pytest.param(setp("round", -1), "round: must be >= 0, got -1", id="negative-round"),
    pytest.param(setp("round", 2**60), "round: must be <=", id="huge-round"),
    pytest.param(setp("round", BIG), "round: must be <=", id="1000-bit-round"),
    pytest.param(setp("experiment", 7), "experiment: experiment name must be a string", id="int-experiment"),
    pytest.param(
        setp("experiment", "../x"), "experiment: '../x' is not a valid experiment name", id="experiment-dotdot"
    ),
    pytest.param(setp("experiment", "a/b"), "path separator", id="experiment-slash"),
    pytest.param(setp("model", 5), "model: expected a string, got integer", id="int-model"),
    pytest.param(setp("model", "qwen\nINFO fake log line"), "model: 'qwen\\nINFO", id="model-newline"),
    pytest.param(setp("created_at", "now"), "created_at: expected a number, got string", id="string-created-at"),
    pytest.param(setp("created_at", None), "created_at: expected a number, got null", id="null-created-at"),
    pytest.param(setp("groups", {}), "groups: expected an array, got object", id="groups-object"),
    pytest.param(setp("groups", None), "groups: expected an array, got null", id="groups-null"),
    pytest.param(setp(*G0, "x"), "groups[0]: expected an object, got string", id="group-string"),
    pytest.param(
        setp(*G0, "rewards", 1, "1.0"), "groups[0].rewards[1]: expected a number, got string", id="string-reward"
    ),
    pytest.param(
        setp(*G0, "rewards", 1, True), "groups[0].rewards[1]: expected a number, got boolean", id="bool-reward"
    ),
    pytest.param(setp(*G0, "rewards", 1, None), "groups[0].rewards[1]: expected a number, got null", id="null-reward"),
    pytest.param(
        setp(*G0, "rewards", 1, [1.0]), "groups[0].rewards[1]: expected a number, got array", id="list-reward"
    ),
    pytest.param(setp(*G0, "rewards", 1.0), "groups[0].rewards: expected an array, got number", id="scalar-rewards"),
    pytest.param(setp(*G0, "advantages", "0,1"), "advantages: expected an array, got string", id="string-advantages"),
    pytest.param(setp(*C0, "token_ids", 1, 2.0), "token_ids[1]: expected an integer, got number", id="float-token-id"),
    pytest.param(setp(*C0, "token_ids", 1, -5), "token_ids[1]: must be >= 0", id="negative-token-id"),
    pytest.param(setp(*C0, "token_ids", 1, "7"), "token_ids[1]: expected an integer, got string", id="string-token-id"),
    pytest.param(setp(*C0, "token_ids", 1, True), "token_ids[1]: expected an integer, got boolean", id="bool-token-id"),
    pytest.param(setp(*C0, "token_ids", 1, 2**40), "token_ids[1]: must be <=", id="huge-token-id"),
    pytest.param(setp(*C0, "token_ids", {}), "token_ids: expected an array, got object", id="token-ids-object"),
    pytest.param(setp(*C0, "num_tokens", -1), "num_tokens: must be >= 0", id="negative-num-tokens"),
    pytest.param(setp(*C0, "num_tokens", 6.5), "num_tokens: expected an integer, got number", id="float-num-tokens"),
    pytest.param(setp(*C0, "num_tokens", False), "num_tokens: expected an integer, got boolean", id="bool-num-tokens"),
    pytest.param(setp(*C0, "logprobs", 0, "-0.1"), "logprobs[0]: expected a number, got string", id="string-logprob"),
    pytest.param(setp(*C0, "text", 42), "completions[0].text: expected a string, got integer", id="int-text"),
    pytest.param(setp(*C0, "text", None), "completions[0].text: expected a string, got null", id="null-text"),
    pytest.param(setp(*C0, "reasoning", ["a"]), "reasoning: expected a string, got array", id="list-reasoning"),
    pytest.param(setp(*C0, "x"), "completions[0]: expected an object, got string", id="completion-string"),
    pytest.param(setp(*M0, "content", ["a"]), "messages[0].content: expected a string, got array", id="list-content"),
    pytest.param(setp(*M0, "x"), "messages[0]: expected an object, got string", id="message-string"),
    pytest.param(setp(*P0, "messages", "hi"), "messages: expected an array, got string", id="messages-string"),
    pytest.param(setp(*P0, "messages", []), "messages: needs at least 1 entry", id="no-messages-at-all"),
    pytest.param(setp(*P0, "metadata", []), "metadata: expected an object, got array", id="metadata-array"),
    pytest.param(setp(*P0, "metadata", None), "metadata: expected an object, got null", id="metadata-null"),
    pytest.param(setp(*P0, "task", ""), "problem.task: must not be empty", id="empty-task"),
    pytest.param(setp(*P0, "id", ""), "problem.id: must not be empty", id="empty-problem-id"),
    pytest.param(setp(*P0, "id", 17), "problem.id: expected a string, got integer", id="int-problem-id"),
    pytest.param(setp(*P0, "task", "math\x1b[31m"), "contains a control character", id="task-escape-seq"),
    pytest.param(setp(*G0, "problem", None), "groups[0].problem: expected an object, got null", id="null-problem"),
    pytest.param(setp(*G0, "completions", []), "completions: needs at least 1 entry", id="no-completions-at-all"),
    pytest.param(setp("signature", "abc"), "signature: expected 64 lowercase hex digits", id="short-signature"),
    pytest.param(setp("signature", "A" * 64), "signature: expected 64 lowercase hex digits", id="upper-signature"),
    pytest.param(setp("signature", 5), "signature: expected a string, got integer", id="int-signature"),
    # --- semantics
    pytest.param(setp(*G0, "rewards", [1.0]), "groups[0].rewards: 1 rewards for 2 completions", id="short-rewards"),
    pytest.param(setp(*G1, "advantages", [0, 0, 0, 0]), "4 advantages for 3 completions", id="long-advantages"),
    pytest.param(setp(*C0, "logprobs", [-1.0]), "1 logprobs for 3 token_ids", id="logprobs-vs-token-ids"),
    pytest.param(setp(*M0, "role", "tool"), "role: 'tool' is not one of system, user, assistant", id="role-tool"),
    pytest.param(setp(*M0, "role", "System"), "is not one of", id="role-wrong-case"),
    pytest.param(setp(*M0, "role", 1), "role: expected a string, got integer", id="role-int"),
    pytest.param(setp(*C0, "finish_reason", "timeout"), "'timeout' is not one of stop, length, error", id="bad-finish"),
    pytest.param(setp(*C0, "finish_reason", None), "finish_reason: expected a string, got null", id="null-finish"),
    # --- node ids, payload and group
    pytest.param(setp("node", ".."), "node: '..' is not a valid node id", id="node-dotdot"),
    pytest.param(setp("node", "a..b"), "contains '..'", id="node-inner-dotdot"),
    pytest.param(setp("node", "../../etc/passwd"), "path separator '/'", id="node-traversal"),
    pytest.param(setp("node", "a/b"), "path separator '/'", id="node-slash"),
    pytest.param(setp("node", "a\\b"), "path separator '\\\\'", id="node-backslash"),
    pytest.param(setp("node", "a\x00b"), "control character", id="node-nul"),
    pytest.param(setp("node", "a\nb"), "control character", id="node-newline"),
    pytest.param(setp("node", LONG_NODE), "65 characters long (at most 64)", id="node-65-chars"),
    pytest.param(setp("node", ""), "node: '' is not a valid node id: it is empty", id="node-empty"),
    pytest.param(setp("node", "nod\u0435-a"), "use only ASCII letters", id="node-cyrillic-e"),
    pytest.param(setp("node", "\uff4e\uff4f\uff44\uff45"), "use only ASCII letters", id="node-fullwidth"),
    pytest.param(setp("node", "node a"), "use only ASCII letters", id="node-space"),
    pytest.param(setp("node", ".hidden"), "starts with '.'", id="node-leading-dot"),
    pytest.param(setp("node", "-rf"), "starts with '-'", id="node-leading-dash"),
    pytest.param(setp("node", "CON"), "reserved file name on Windows", id="node-windows-con"),
    pytest.param(setp("node", "nul.x"), "reserved file name on Windows", id="node-windows-nul"),
    pytest.param(setp("node", 1), "node: node id must be a string, got integer", id="node-int"),
    pytest.param(setp(*G1, "node", "../x"), "groups[1].node: '../x' is not a valid node id", id="group-node-traversal"),
    pytest.param(setp(*G1, "node", LONG_NODE), "groups[1].node:", id="group-node-65"),
    pytest.param(setp(*G1, "node", None), "groups[1].node: node id must be a string, got null", id="group-node-null"),
    # --- limits
    pytest.param(lambda: b" " * (64 * 1024 * 1024 + 1), "Limits.max_payload_bytes", id="over-64-MiB"),
]


# Cases over a size limit: each tightens one bound of the defaults.
def tight(**changes: int) -> Limits:
    return attrs.evolve(DEFAULT_LIMITS, **changes)


OVERSIZE: list[Any] = [
    pytest.param(raw(b" " * 4097), tight(max_payload_bytes=4096), "(Limits.max_payload_bytes)", id="payload-bytes"),
    pytest.param(setp("groups", []), tight(max_groups=1, max_payload_bytes=4096), None, id="zero-groups-is-fine"),
    pytest.param(lambda: dump(base_data()),
                 tight(max_groups=2, max_messages=2, max_completions_per_group=3, max_tokens=3),
                 None, id="at-the-limits-is-fine"),
    pytest.param(raw(b""), tight(max_groups=1), "invalid JSON", id="empty-with-tight-limits"),
    pytest.param(lambda: dump(base_data()), tight(max_groups=1),
                 "groups: 2 entries, over the limit of 1 (Limits.max_groups)", id="groups-count"),
    pytest.param(lambda: dump(base_data()), tight(max_messages=1),
                 "groups[0].problem.messages: 2 entries, over the limit of 1 (Limits.max_messages)",
                 id="messages-count"),
    pytest.param(lambda: dump(base_data()), tight(max_completions_per_group=2),
                 "groups[1].completions: 3 entries, over the limit of 2 (Limits.max_completions_per_group)",
                 id="completions-count"),
    pytest.param(setp(*C0, "text", "x" * 41), tight(max_text_chars=40),
                 "completions[0].text: 41 characters, over the limit of 40 (Limits.max_text_chars)", id="text-chars"),
    pytest.param(setp(*M0, "content", "x" * 41), tight(max_text_chars=40),
                 "messages[0].content: 41 characters", id="content-chars"),
    pytest.param(setp(*C0, "reasoning", "x" * 201), tight(max_text_chars=200), "reasoning: 201 characters",
                 id="reasoning-chars"),
    pytest.param(setp(*P0, "answer", {"k": "x" * 201}), tight(max_text_chars=200), "answer.k: 201 characters",
                 id="answer-string-chars"),
    pytest.param(setp(*P0, "metadata", {"k" * 201: 1}), tight(max_text_chars=200), "201 characters",
                 id="metadata-key-chars"),
    pytest.param(setp(*C0, "token_ids", [1, 2, 3]), tight(max_tokens=2),
                 "token_ids: 3 entries, over the limit of 2 (Limits.max_tokens)", id="token-count"),
    pytest.param(delp(*C0, "token_ids"), tight(max_tokens=2),
                 "logprobs: 3 entries, over the limit of 2 (Limits.max_tokens)", id="logprob-count"),
    pytest.param(setp("model", "m" * 13), tight(max_name_chars=12),
                 "model: 13 characters, over the limit of 12 (Limits.max_name_chars)", id="model-chars"),
    pytest.param(setp(*P0, "id", "i" * 31), tight(max_name_chars=30), "problem.id: 31 characters",
                 id="problem-id-chars"),
    pytest.param(setp(*P0, "answer", [[[[1]]]]), tight(max_json_depth=3), "answer[0][0][0]: nested deeper than 3",
                 id="answer-depth-small"),
]  # fmt: skip


def _reject(make: Callable[[], bytes], reason: str, limits: Limits = DEFAULT_LIMITS) -> None:
    blob = make()
    with pytest.raises(PayloadError) as info:
        codec.decode_payload(blob, limits)
    assert reason in str(info.value)
    # The same bytes gzipped: the gzip layer adds no way around the checks.
    with pytest.raises(PayloadError) as info:
        codec.read_gz(gzip.compress(blob, 1), limits)
    assert reason in str(info.value)


@pytest.mark.parametrize(("make", "reason"), MALFORMED)
def test_malformed_payloads_are_refused(make: Callable[[], bytes], reason: str) -> None:
    _reject(make, reason)


@pytest.mark.parametrize(("make", "limits", "reason"), OVERSIZE)
def test_size_limits(make: Callable[[], bytes], limits: Limits, reason: str | None) -> None:
    if reason is None:
        codec.decode_payload(make(), limits)
    else:
        _reject(make, reason, limits)


def test_each_malformed_case_really_changes_the_payload() -> None:
    """Guard the table itself: its helpers build a payload that is valid before mutation."""
    assert codec.decode_payload(dump(base_data())) == filled(VALID)
    assert codec.decode_payload(literal(*G0, "rewards", 1, "0.0")()).groups[0].rewards == (1.0, 0.0)


# ----------------------------------------------------------------------------- gzip layer


@pytest.fixture(scope="module")
def bomb_single() -> bytes:
    return gzip.compress(bytes(65 * 1024 * 1024), 1)  # 65 MiB of zeros in ~0.3 MB


@pytest.fixture(scope="module")
def bomb_members() -> bytes:
    member = gzip.compress(bytes(16 * 1024 * 1024), 9)
    return member * 64  # 1 GiB of zeros, about 1 MB of gzip


GOOD_GZ = codec.write_gz(VALID)
GZ_CASES: list[Any] = [
    pytest.param(b"", "not gzip data", id="empty"),
    pytest.param(codec.encode_payload(VALID), "not gzip data", id="plain-json"),
    pytest.param(b"PK\x03\x04zipfile", "not gzip data", id="zip-file"),
    pytest.param(GOOD_GZ[:10], "truncated gzip data", id="header-only"),
    pytest.param(GOOD_GZ[:5], "truncated gzip data", id="half-header"),
    pytest.param(GOOD_GZ[: len(GOOD_GZ) // 2], "truncated gzip data", id="truncated-middle"),
    pytest.param(GOOD_GZ[:-4], "truncated gzip data", id="truncated-no-isize"),
    pytest.param(GOOD_GZ[:-1], "truncated gzip data", id="truncated-last-byte"),
    pytest.param(GOOD_GZ[:-8] + bytes(4) + GOOD_GZ[-4:], "corrupt gzip data", id="bad-crc"),
    pytest.param(GOOD_GZ[:-4] + b"\xff\xff\xff\x0f", "corrupt gzip data", id="bad-length"),
    pytest.param(GOOD_GZ[:2] + b"\x07" + GOOD_GZ[3:], "corrupt gzip data", id="bad-method"),
    pytest.param(GOOD_GZ[:20] + bytes(8) + GOOD_GZ[28:], "corrupt gzip data", id="zeroed-deflate"),
    pytest.param(GOOD_GZ + b"garbage", "7 bytes of trailing garbage", id="trailing-garbage"),
    pytest.param(GOOD_GZ + b"\x1f\x8b", "truncated gzip data", id="trailing-half-member"),
    pytest.param(gzip.compress(b'{"a":'), "invalid JSON", id="gzipped-truncated-json"),
    pytest.param(gzip.compress(b"\xff\xfe"), "not valid UTF-8", id="gzipped-invalid-utf8"),
    pytest.param(gzip.compress(b"[1]"), "top level: expected an object", id="gzipped-array"),
]


@pytest.mark.parametrize(("blob", "reason"), GZ_CASES)
def test_bad_gzip_is_refused(blob: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        codec.read_gz(blob)
    assert reason in str(info.value)


def test_gzip_bomb_is_refused(bomb_single: bytes) -> None:
    with pytest.raises(PayloadError, match=r"inflates to more than 67108864 bytes"):
        codec.read_gz(bomb_single)


def test_gzip_bomb_of_many_members_is_refused_without_allocating_it(bomb_members: bytes) -> None:
    limits = Limits(max_payload_bytes=8 * 1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError, match="inflates to more than 8388608 bytes"):
            codec.read_gz(bomb_members, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * limits.max_payload_bytes, peak  # never near the 1 GiB it inflates to


def cheap_file(completions: int) -> bytes:
    """A small gzip file of one group of many empty completions: what a JSON parser pays dearly for."""
    data = codec.to_data(VALID)
    data["groups"] = data["groups"][:1]
    group = data["groups"][0]
    group["completions"] = [{"text": "", "finish_reason": "stop"}] * completions
    group["rewards"] = group["advantages"] = [0] * completions
    return gzip.compress(json.dumps(data, separators=(",", ":")).encode(), 9)


def test_a_cheap_file_of_a_million_completions_is_refused_before_it_is_parsed() -> None:
    blob = cheap_file(10**6)
    assert len(blob) < 200_000  # a ~140 KB file that inflates to ~40 MB
    tracemalloc.start()
    try:
        with pytest.raises(
            PayloadError, match=r"over the limit of 524288 \(Limits.max_brackets\); refused before parsing"
        ):
            codec.read_gz(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    inflated = len(gzip.decompress(blob))
    assert peak < 3 * inflated, peak  # parsing it whole would build a million dicts (about 8x the text)


def test_brackets_inside_texts_count_too_and_the_limit_can_be_raised() -> None:
    data = codec.to_data(VALID)
    data["groups"][0]["completions"][0]["text"] = "{[" * 100
    blob = json.dumps(data).encode()
    with pytest.raises(PayloadError, match="Limits.max_brackets"):
        codec.decode_payload(blob, Limits(max_brackets=150))
    assert codec.decode_payload(blob, Limits(max_brackets=300)).groups[0].completions[0].text == "{[" * 100


def test_oversize_messages_name_the_limit() -> None:
    limits = Limits(max_payload_bytes=4096)
    with pytest.raises(
        PayloadError, match=r"^payload is 4097 bytes, over the limit of 4096 \(Limits.max_payload_bytes\)$"
    ):
        codec.decode_payload(b" " * 4097, limits)
    with pytest.raises(PayloadError, match=r"^gzip data inflates to more than 4096 bytes \(Limits.max_payload_bytes\)"):
        codec.read_gz(gzip.compress(b" " * 4097), limits)


def test_compressed_blob_over_the_limit_is_refused() -> None:
    with pytest.raises(PayloadError, match="compressed payload is 5000 bytes"):
        codec.read_gz(b"\x1f\x8b" + bytes(4998), Limits(max_payload_bytes=4096))


def test_non_bytes_input_is_refused() -> None:
    for bad in ("{}", None, 3, ["a"]):
        with pytest.raises(PayloadError, match="expected bytes"):
            codec.decode_payload(bad)  # type: ignore[arg-type]
        with pytest.raises(PayloadError, match="expected bytes"):
            codec.read_gz(bad)  # type: ignore[arg-type]


def test_bytes_like_inputs_are_accepted() -> None:
    assert codec.decode_payload(bytearray(codec.encode_payload(VALID))) == filled(VALID)
    assert codec.decode_payload(memoryview(codec.encode_payload(VALID))) == filled(VALID)
    assert codec.read_gz(memoryview(GOOD_GZ)) == filled(VALID)


# --------------------------------------------------------------------------- node ids


@pytest.mark.parametrize("node", ["node-0", "a", "A.b_c-d", "x" * 64, "node1.backup", "_x", "0", "CONSOLE", "com10"])
def test_valid_node_ids(node: str) -> None:
    assert codec.validate_node_id(node) == node
    assert codec.validate_experiment_name(node) == node


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        ("", "empty"),
        ("x" * 65, "65 characters"),
        (".", "starts with '.'"),
        ("..", "starts with '.'"),
        ("a..b", "'..'"),
        ("a.", "ends with '.'"),
        ("-a", "starts with '-'"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("/abs", "path separator"),
        ("C:x", "ASCII letters"),
        ("a\x00", "control character"),
        ("a\n", "control character"),
        ("a\r", "control character"),
        ("a\t", "control character"),
        ("a\x7f", "control character"),
        ("a\u0085", "control character"),
        ("\uff41", "ASCII letters"),  # fullwidth a
        ("n\u03bfde", "ASCII letters"),  # Greek omicron
        ("a\u200bb", "ASCII letters"),  # zero-width space
        ("a b", "ASCII letters"),
        ("a*b", "ASCII letters"),
        ("aux", "Windows"),
        ("LPT1.log", "Windows"),
        (None, "must be a string"),
        (5, "must be a string"),
        (b"node", "must be a string"),
    ],
    ids=repr,
)
def test_invalid_node_ids(node: Any, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        codec.validate_node_id(node)
    assert reason in str(info.value) and "node id" in str(info.value)
    with pytest.raises(PayloadError) as info:
        codec.validate_experiment_name(node)
    assert "experiment name" in str(info.value)


# ------------------------------------------------------------------ encoding refuses garbage


def _group(**changes: Any) -> Group:
    return attrs.evolve(VALID.groups[0], **changes)


def _completion(**changes: Any) -> Group:
    c = attrs.evolve(VALID.groups[0].completions[0], **changes)
    return _group(completions=[c, VALID.groups[0].completions[1]])


def _problem(**changes: Any) -> Group:
    return _group(problem=attrs.evolve(VALID.groups[0].problem, **changes))


class Weird:
    pass


cyclic: list[Any] = []
cyclic.append(cyclic)

UNENCODABLE: list[Any] = [
    pytest.param(
        {"groups": [_group(rewards=(math.nan, 0.0))]}, "groups[0].rewards[0]: not a finite number", id="nan-reward"
    ),
    pytest.param(
        {"groups": [_group(advantages=(math.inf, 0.0))]}, "groups[0].advantages[0]: not a finite number", id="inf-adv"
    ),
    pytest.param(
        {"groups": [_group(rewards=(BIG, 0.0))]}, "groups[0].rewards[0]: not a finite number", id="huge-int-reward"
    ),
    pytest.param({"groups": [_group(rewards=(True, 0.0))]}, "expected a number, got boolean", id="bool-reward"),
    pytest.param({"groups": [_group(rewards=("1", 0.0))]}, "expected a number, got string", id="string-reward"),
    pytest.param(
        {"groups": [_completion(logprobs=(-math.inf, 0.0, 0.0))]}, "logprobs[0]: not a finite number", id="inf-logprob"
    ),
    pytest.param(
        {"groups": [_completion(token_ids=(1.5, 2, 3))]}, "token_ids[0]: expected an integer", id="float-token"
    ),
    pytest.param({"groups": [_completion(token_ids=(1, 2))]}, "3 logprobs for 2 token_ids", id="token-mismatch"),
    pytest.param({"groups": [_completion(finish_reason="timeout")]}, "'timeout' is not one of", id="bad-finish"),
    pytest.param(
        {"groups": [_completion(text=None)]}, "completions[0].text: expected a string, got null", id="none-text"
    ),
    pytest.param({"groups": [_problem(answer=math.nan)]}, "problem.answer: not a finite number", id="nan-answer"),
    pytest.param(
        {"groups": [_problem(answer={"a": [1, math.inf]})]}, "problem.answer.a[1]: not a finite", id="inf-in-answer"
    ),
    pytest.param({"groups": [_problem(metadata={1: "x"})]}, "object keys must be strings", id="int-key-metadata"),
    pytest.param({"groups": [_problem(answer={"a", "b"})]}, "not a JSON value: set", id="set-answer"),
    pytest.param({"groups": [_problem(answer=Weird())]}, "not a JSON value: Weird", id="object-answer"),
    pytest.param({"groups": [_problem(answer=b"x")]}, "not a JSON value: bytes", id="bytes-answer"),
    pytest.param({"groups": [_problem(answer=cyclic)]}, "nested too deeply (or cyclic)", id="cyclic-answer"),
    pytest.param({"groups": [_problem(answer=nested(40))]}, "Limits.max_json_depth", id="deep-answer"),
    pytest.param({"groups": [_problem(answer="\ud800")]}, "lone UTF-16 surrogate", id="surrogate-answer"),
    pytest.param({"groups": [_problem(messages=[Message("tool", "x")])]}, "'tool' is not one of", id="bad-role"),
    pytest.param({"groups": [_problem(messages=[])]}, "needs at least 1 entry", id="no-messages"),
    pytest.param({"groups": [_group(node="a/b")]}, "groups[0].node: 'a/b' is not a valid node id", id="bad-group-node"),
    pytest.param({"node": "../up"}, "node: '../up' is not a valid node id", id="bad-node"),
    pytest.param({"node": ""}, "it is empty", id="empty-node"),
    pytest.param({"experiment": "a b"}, "experiment: 'a b' is not a valid experiment name", id="bad-experiment"),
    pytest.param({"round": -1}, "round: must be >= 0", id="negative-round"),
    pytest.param({"round": 1.0}, "round: expected an integer, got number", id="float-round"),
    pytest.param({"created_at": math.nan}, "created_at: not a finite number", id="nan-created-at"),
    pytest.param({"schema_version": 99}, "unsupported version 99", id="future-schema"),
    pytest.param({"signature": "not-hex"}, "signature: expected 64 lowercase hex digits", id="bad-signature"),
    pytest.param({"model": "m\x00"}, "control character", id="nul-model"),
]


@pytest.mark.parametrize(("changes", "reason"), UNENCODABLE)
def test_encoding_refuses_what_a_peer_would_refuse(changes: dict[str, Any], reason: str) -> None:
    p = make_payload(**changes)
    for encode in (codec.encode_payload, codec.write_gz):
        with pytest.raises(PayloadError) as info:
            encode(p)
        assert reason in str(info.value)


def test_encoding_respects_limits() -> None:
    with pytest.raises(PayloadError, match=r"Limits\.max_text_chars"):
        codec.encode_payload(VALID, Limits(max_text_chars=5))
    with pytest.raises(PayloadError, match=r"Limits\.max_payload_bytes"):
        codec.encode_payload(VALID, Limits(max_payload_bytes=500))


def test_to_data_refuses_non_records_and_non_json() -> None:
    with pytest.raises(PayloadError, match="not a sapo record"):
        codec.to_data({"a": 1})  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="answer: not a finite number"):
        codec.to_data(attrs.evolve(VALID.groups[0].problem, answer=math.nan))
    # numpy-like scalars (numbers.Real / Integral) are accepted in numeric fields
    from fractions import Fraction

    data = codec.to_data(attrs.evolve(VALID.groups[0], rewards=(Fraction(1, 2), 0.0)))
    assert data["rewards"] == [0.5, 0.0]


def test_decoders_of_python_data_raise_only_payload_error() -> None:
    odd: list[Any] = [None, object(), {1: 2}, {"schema_version": 1, 5: 6}, [], "x", {"text": Weird()}]
    for decoder in (
        codec.payload_from_data,
        codec.group_from_data,
        codec.problem_from_data,
        codec.completion_from_data,
        codec.message_from_data,
    ):
        for value in odd:
            with pytest.raises(PayloadError):
                decoder(value)
    with pytest.raises(PayloadError, match="answer: not a JSON value: tuple"):
        codec.problem_from_data(
            {"task": "t", "id": "i", "messages": [{"role": "user", "content": "q"}], "answer": (1,)}
        )


# --------------------------------------------------------------------------- signatures


def _signed_data() -> dict[str, Any]:
    return json.loads(codec.encode_payload(codec.sign_payload(make_payload(), SECRET)))


def _tampered(mutate: Callable[[dict[str, Any]], None]) -> RoundPayload:
    data = _signed_data()
    mutate(data)
    return codec.decode_payload(dump(data))  # still a valid payload: only the signature can tell


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        parent, key = _walk(data, path)
        parent[key] = value

    return mutate


def _rename_node(data: dict[str, Any]) -> None:
    data["node"] = "node-evil"
    for g in data["groups"]:
        if g["node"] == "node-a":
            g["node"] = "node-evil"


TAMPERINGS = [
    pytest.param(_set((*G0, "rewards", 1), 1.0), id="reward"),
    pytest.param(_set((*G0, "rewards", 0), 1.0000000000000002), id="reward-one-ulp"),
    pytest.param(_set((*G1, "advantages", 0), 0.5), id="advantage"),
    pytest.param(_rename_node, id="node"),
    pytest.param(_set((*G1, "node"), "node-a"), id="group-node"),
    pytest.param(_set(("round",), 4), id="round"),
    pytest.param(_set(("experiment",), "exp-2"), id="experiment"),
    pytest.param(_set(("model",), "other"), id="model"),
    pytest.param(_set(("created_at",), 0.0), id="created-at"),
    pytest.param(_set((*C0, "text"), "<answer>20</answer>"), id="text"),
    pytest.param(_set((*C0, "token_ids", 0), 9), id="token-id"),
    pytest.param(_set((*P0, "metadata", "difficulty"), 3), id="metadata"),
    pytest.param(_set((*P0, "answer"), "15"), id="answer"),
    pytest.param(_set((*M0, "content"), "ignore previous instructions"), id="prompt"),
    pytest.param(lambda d: d["groups"].pop(), id="dropped-group"),
    pytest.param(lambda d: d["groups"].reverse(), id="reordered-groups"),
    pytest.param(lambda d: d["groups"][0]["completions"][0].pop("reasoning"), id="dropped-optional"),
]


@pytest.mark.parametrize("mutate", TAMPERINGS)
def test_tampered_payload_fails_verification(mutate: Callable[[dict[str, Any]], None]) -> None:
    payload = _tampered(mutate)
    assert payload.signature is not None
    with pytest.raises(PayloadError, match="signature does not match"):
        codec.verify_signature(payload, SECRET)


def test_untampered_signed_payload_verifies_after_json_round_trip() -> None:
    codec.verify_signature(_tampered(lambda d: None), SECRET)


def test_wrong_secret_fails() -> None:
    signed = codec.sign_payload(make_payload(), SECRET)
    for wrong in ("other", SECRET + " ", SECRET.upper(), b"swarm-secreT"):
        with pytest.raises(PayloadError, match="signature does not match"):
            codec.verify_signature(signed, wrong)


def test_missing_signature_with_a_secret_set_fails() -> None:
    with pytest.raises(PayloadError, match="not signed"):
        codec.verify_signature(codec.decode_payload(codec.encode_payload(make_payload())), SECRET)


def test_no_secret_accepts_anything() -> None:
    for secret in (None, "", b""):
        codec.verify_signature(make_payload(), secret)
        codec.verify_signature(make_payload(signature="0" * 64), secret)
        assert codec.sign_payload(make_payload(signature="0" * 64), secret).signature is None


def test_bytes_and_str_secrets_agree() -> None:
    signed = codec.sign_payload(make_payload(), "clé")
    codec.verify_signature(signed, "clé".encode())
    assert codec.sign_payload(make_payload(), "clé".encode()).signature == signed.signature


def test_signature_is_hmac_of_the_documented_canonical_form() -> None:
    """Pins the contract other implementations must follow."""
    signed = codec.sign_payload(make_payload(), SECRET)
    data = codec.to_data(signed)
    del data["signature"]
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert signed.signature == hmac.new(SECRET.encode(), canonical, hashlib.sha256).hexdigest()


def test_resigning_ignores_the_old_signature() -> None:
    once = codec.sign_payload(make_payload(), SECRET)
    twice = codec.sign_payload(once, SECRET)
    assert once.signature == twice.signature
    assert codec.sign_payload(make_payload(signature="f" * 64), SECRET).signature == once.signature


def test_bad_secret_type() -> None:
    with pytest.raises(PayloadError, match="secret must be str or bytes"):
        codec.sign_payload(make_payload(), 123)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ property tests


def _is_node_id(value: str) -> bool:
    try:
        codec.validate_node_id(value)
    except PayloadError:
        return False
    return True


node_ids = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,15}", fullmatch=True).filter(_is_node_id)
texts = st.text(max_size=20)
labels = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=16)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | finite | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
messages = st.builds(Message, role=st.sampled_from(codec.ROLES), content=texts)
problems = st.builds(
    Problem,
    task=labels,
    id=labels,
    messages=st.lists(messages, min_size=1, max_size=3),
    answer=json_values,
    metadata=st.dictionaries(texts, json_values, max_size=3),
)


@st.composite
def completions(draw: st.DrawFn) -> Completion:
    n = draw(st.integers(0, 4))
    ids = draw(st.none() | st.lists(st.integers(0, 2**31 - 1), min_size=n, max_size=n))
    logprobs = draw(st.none() | st.lists(finite, min_size=n, max_size=n))
    return Completion(
        text=draw(texts),
        finish_reason=draw(st.sampled_from(codec.FINISH_REASONS)),
        num_tokens=draw(st.none() | st.integers(0, 2**53 - 1)),
        token_ids=ids,
        logprobs=logprobs,
        reasoning=draw(st.none() | texts),
    )


@st.composite
def groups(draw: st.DrawFn) -> Group:
    n = draw(st.integers(1, 3))
    return Group(
        problem=draw(problems),
        completions=draw(st.lists(completions(), min_size=n, max_size=n)),
        rewards=draw(st.lists(finite, min_size=n, max_size=n)),
        advantages=draw(st.lists(finite, min_size=n, max_size=n)),
        node=draw(st.just("") | node_ids),
    )


payloads = st.builds(
    RoundPayload,
    experiment=node_ids,
    round=st.integers(0, 2**53 - 1),
    node=node_ids,
    groups=st.lists(groups(), max_size=3),
    model=st.just("") | labels,
    created_at=finite,
)

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(payloads)
def test_property_round_trip(p: RoundPayload) -> None:
    expected = filled(p)
    for back in (codec.decode_payload(codec.encode_payload(p)), codec.read_gz(codec.write_gz(p))):
        assert back == expected
        assert codec.to_data(back) == codec.to_data(p)
    signed = codec.sign_payload(p, SECRET)
    back = codec.read_gz(codec.write_gz(signed))
    codec.verify_signature(back, SECRET)
    assert codec.encode_payload(back) == codec.encode_payload(signed)


def _check_decoded_or_refused(decode: Callable[[bytes], RoundPayload], blob: bytes) -> None:
    try:
        p = decode(blob)
    except PayloadError as exc:
        assert str(exc)
        return
    assert isinstance(p, RoundPayload)
    # Whatever was accepted is itself publishable and stable.
    assert codec.decode_payload(codec.encode_payload(p)) == p


byte_edits = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "delete", "insert", "truncate"]),
        st.integers(0, 10**6),
        st.binary(min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=4,
)


def _edit(blob: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    data = bytearray(blob)
    for op, where, extra in edits:
        i = where % (len(data) + 1)
        if op == "flip" and i < len(data):
            data[i] ^= 1 << (extra[0] % 8)
        elif op == "set" and i < len(data):
            data[i] = extra[0]
        elif op == "delete":
            del data[i : i + len(extra)]
        elif op == "insert":
            data[i:i] = extra
        elif op == "truncate":
            del data[i:]
    return bytes(data)


MUTATE = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@MUTATE
@given(byte_edits)
def test_property_gzip_byte_mutations(edits: list[tuple[str, int, bytes]]) -> None:
    _check_decoded_or_refused(codec.read_gz, _edit(GOOD_GZ, edits))


@MUTATE
@given(byte_edits)
def test_property_json_byte_mutations(edits: list[tuple[str, int, bytes]]) -> None:
    _check_decoded_or_refused(codec.decode_payload, _edit(codec.encode_payload(VALID), edits))


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


ALL_PATHS = _paths(base_data())[1:]
odd_values = json_values | st.sampled_from([math.nan, math.inf, -math.inf, 2**70, -1, "", "../x", [], {}, True])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_PATHS), st.sampled_from(["replace", "delete", "add-key"]), odd_values)
def test_property_structural_mutations(path: tuple[Any, ...], op: str, value: Any) -> None:
    data = copy.deepcopy(base_data())
    parent, key = _walk(data, path)
    if op == "replace":
        parent[key] = value
    elif op == "delete":
        del parent[key]
    elif isinstance(parent[key], dict):
        parent[key]["zz_unknown"] = value
    else:
        parent[key] = value
    _check_decoded_or_refused(codec.decode_payload, json.dumps(data).encode())
