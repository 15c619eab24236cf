#!/usr/bin/env python3
"""Write the hand-made hostile seed inputs into tests/fuzz_cases/<target>/seed-*.

These are the regression test's baseline inputs and the fuzzers' starting corpus. Crash
inputs found by fuzzing are added beside them as crash-* files (never overwritten here).
Run from anywhere: python3 fuzz/make_seeds.py
"""
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fuzz_cases")
ID = "0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e"
SCRIPT = "<script>alert(1)</script>"
PINGS = "@everyone @here <@123> <!channel> <!here|here>"
EMOJI = "😀👩‍👩‍👧‍👦🇺🇦 \u202eRTL\u202c \u200b zero-width"
MD = "**bold** __u__ ~~s~~ ||spoiler|| [click](https://evil.example) # head\n> quote\n-# small"


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def j(v):
    return json.dumps(v, ensure_ascii=False)


# ----- action_data -------------------------------------------------------------------------
for code in "oadx":
    write("action_data", f"valid-{code}", f"v1:{ID}:{code}")
write("action_data", "old-version", "v0:abc:o")
write("action_data", "future-version", f"v2:{ID}:o")
write("action_data", "65-byte-id", "v1:" + "a" * 65 + ":o")
write("action_data", "64-byte-id", "v1:" + "b" * 64 + ":d")
write("action_data", "huge-id", "v1:" + "9" * 5000 + ":d")
write("action_data", "extra-part", f"v1:{ID}:o:extra")
write("action_data", "space-in-id", "v1:a b:o")
write("action_data", "empty-id", "v1::o")
write("action_data", "script", f"v1:{SCRIPT}:o")
write("action_data", "emoji", "v1:😀:a")
write("action_data", "invalid-utf8", b"v1:\xff\xfe\xc3:o")
write("action_data", "nul", b"v1:abc\x00:o")
write("action_data", "empty", b"")
write("action_data", "decision-alias", " ALLOW_ALWAYS ")
write("action_data", "transport", "control_ui")
write("action_data", "markup", "telegram_html")
write("action_data", "uuid-id", ID)

# ----- templates: fields separated by NUL, lists by 0x01 -------------------------------------
FIELDS = ["tool", "summary", "command", "args", "risk", "requester", "agent_id", "session_key",
          "status", "progress", "decided_by", "reason", "execution", "approval_id", "short_id",
          "expires_at_text", "expires_in", "outcome_title", "approvers", "decisions"]


def fields(**kw):
    return "\x00".join(kw.get(f, "") if f in kw else "x" for f in FIELDS)


write("templates", "script-everywhere", SCRIPT)
write("templates", "pings-everywhere", PINGS)
write("templates", "markdown-everywhere", MD)
write("templates", "emoji-everywhere", EMOJI)
write("templates", "entities", "&amp; &lt; &#128512; &bogus & &&;; \"quoted\" 'single'")
write("templates", "invalid-utf8", b"\xff\xfe<b>\xc3(\xa0\xa1</b>")
write("templates", "backslashes", "\\*not bold\\* \\\\ \\` \\")
write("templates", "one-backtick-fence", "echo ``` done")
write("templates", "long-entities", "&" * 5000)
write("templates", "long-emoji", "😀" * 3000)
write("templates", "per-field", fields(
    tool="shell <b>", summary=SCRIPT + " & _under_", command="rm -rf / && echo '<done>'",
    args=j({"path": "</pre><b>x", "n": 1e308}), risk="critical", requester=PINGS,
    agent_id="agent:`x`", session_key="a|b||c", status="approved", progress="1 of 2: *bob*",
    decided_by="Bob <bob@example.com>", reason=MD, execution="cost $1 <i>", approval_id=ID,
    short_id="0b9c4d2e", expires_at_text="2026-01-01 00:00:00 UTC", expires_in="in 5m",
    outcome_title="Approved <u>", approvers="a<b>\x01@everyone\x01", decisions="approve-once\x01deny"))
write("templates", "empty-optionals", fields(
    tool="t", summary="", command="", args="", requester="", agent_id="", session_key="",
    progress="", decided_by="", reason="", execution="", outcome_title="", approvers="",
    decisions=""))

# ----- rpc: first byte picks the caller (g gateway, a alice, A admin, b both) -----------------


def rpc(method, params=None, id=1, caller="g", **extra):
    msg = {"jsonrpc": "2.0", "method": method}
    if id is not None:
        msg["id"] = id
    if params is not None:
        msg["params"] = params
    msg.update(extra)
    return caller + j(msg)


HOSTILE_REQ = {"tool": "shell " + SCRIPT, "summary": PINGS + " " + MD,
               "command": "echo '```' && rm -rf ./build </pre><b>", "args": {"x": [SCRIPT, EMOJI]},
               "risk_class": "critical", "agent_id": "release-bot <b>",
               "session_key": "agent:x:`main`", "requester": {"id": "alice@example.com",
                                                              "display_name": "Alice " + SCRIPT},
               "origin": {"channel": "chat-a", "to": "room-2", "thread_id": "7"},
               "timeout_ms": 5, "wait": False}
write("rpc", "request-hostile", rpc("tool.approval.request", HOSTILE_REQ))
write("rpc", "request-waits", rpc("tool.approval.request",
                                  {"tool": "ls", "command": "ls -la", "agent_id": "a"}))
write("rpc", "request-own-id", rpc("tool.approval.request",
                                   dict(HOSTILE_REQ, id=ID, tool="rm", command="rm -rf /"),
                                   caller="b"))
write("rpc", "resolve-prefix", rpc("tool.approval.resolve",
                                   {"id": "0b9c4d", "decision": "approve", "reason": SCRIPT},
                                   caller="a"))
write("rpc", "resolve-relay", rpc("tool.approval.resolve", {
    "id": ID, "decision": "allow-always",
    "approver": {"approver_id": "x", "display_name": SCRIPT, "transport": "slack"}}, caller="A"))
write("rpc", "list-huge", rpc("tool.approval.list", {"limit": 4294967295,
                                                      "cursor": "99999999999999999999:x",
                                                      "status": "pending"}))
write("rpc", "list-cursor-min", rpc("tool.approval.list",
                                    {"cursor": "-9223372036854775808:" + ID}))
write("rpc", "audit", rpc("audit.list", {"after": -9223372036854775808, "limit": 0}, caller="A"))
write("rpc", "rules", rpc("rules.list", caller="a"))
write("rpc", "revoke", rpc("rules.revoke", {"id": "../../etc"}, caller="A"))
write("rpc", "wait-huge", rpc("tool.approval.wait", {"id": ID, "timeout_ms": 18446744073709551615}))
write("rpc", "get-prefix", rpc("tool.approval.get", {"id": "0"}))
write("rpc", "status", rpc("approvald.status", caller="A"))
write("rpc", "enqueue", rpc("tool.task.enqueue", {
    "task_id": "task-" + SCRIPT, "task_type": "chat", "description": MD,
    "estimated_cost": 1e308, "estimated_duration_ms": 18446744073709551615,
    "context": {"deep": [[[[{}]]]]}}))
write("rpc", "report", rpc("tool.execution.report", {
    "task_id": "task-1", "status": "completed", "actual_cost": -1.0,
    "logs": ["x" * 1000], "duration_ms": 18446744073709551615}))
write("rpc", "task-list", rpc("tool.task.list", {"page": 4294967295, "per_page": 0}))
write("rpc", "abort", rpc("tool.task.abort", {"task_id": "t", "transport": "telegram"}, caller="A"))
write("rpc", "queue", rpc("tool.queue.status"))
write("rpc", "batch", "A[" + ",".join([
    rpc("approvald.status", caller="")[0:],
    rpc("nope.method", id="x", caller=""),
    rpc("tool.approval.list", id=None, caller=""),
    "1", "null", "[]", '{"jsonrpc":"1.0","id":2,"method":"x"}',
    '{"jsonrpc":"2.0","id":{"o":1},"method":"x"}',
    '{"jsonrpc":"2.0","id":3,"method":"tool.approval.get","params":[1,2]}',
]) + "]")
write("rpc", "notification", rpc("tool.approval.request", HOSTILE_REQ, id=None))
write("rpc", "empty-batch", "g[]")
write("rpc", "empty-body", "g")
write("rpc", "truncated", 'g{"jsonrpc":"2.0","id":1,"method":"tool.approval.req')
write("rpc", "deep-nesting", "g" + "[" * 5000 + "]" * 5000)
write("rpc", "deep-params", rpc("tool.approval.request",
                                {"tool": "x", "summary": "s", "wait": False,
                                 "args": json.loads("[" * 120 + "]" * 120)}))
write("rpc", "huge-numbers", 'g{"jsonrpc":"2.0","id":1e400,"method":"tool.approval.wait",'
                             '"params":{"id":"x","timeout_ms":1e400}}')
write("rpc", "huge-id", 'g{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"x"}')
write("rpc", "invalid-utf8", b'g{"jsonrpc":"2.0","id":1,"method":"tool.approval.get",'
                             b'"params":{"id":"\xff\xfe"}}')
write("rpc", "escaped-nul", rpc("tool.approval.request",
                                {"tool": "t\u0000", "summary": "nul", "wait": False}))
write("rpc", "lone-surrogate", 'g{"jsonrpc":"2.0","id":1,"method":"tool.approval.request",'
                               '"params":{"tool":"\\ud800","summary":"\\udfff","wait":false}}')
write("rpc", "duplicate-keys", 'g{"jsonrpc":"2.0","id":1,"id":2,"method":"approvald.status",'
                               '"method":"tool.queue.status"}')
write("rpc", "bad-risk", rpc("tool.approval.request",
                             {"tool": "t", "summary": "s", "risk_class": "extreme",
                              "estimated_cost": -0.0, "allowed_decisions": []}))

# ----- telegram: an update as the webhook body; x = wrong secret; p = getUpdates result -----
USER = {"id": 4242, "is_bot": False, "first_name": "Erin " + SCRIPT, "last_name": EMOJI,
        "username": "erin_ek"}
CHAT = {"id": -1001234567890, "title": "Ops <b>", "type": "supergroup", "is_forum": True}


def message(text, mid=7001, reply=None, **extra):
    m = {"message_id": mid, "from": USER, "chat": CHAT, "date": 1718000000, "text": text}
    if reply:
        m["reply_to_message"] = reply
    m.update(extra)
    return m


PROMPT = {"message_id": 7000, "from": {"id": 9000001, "is_bot": True, "first_name": "Approvals"},
          "chat": CHAT, "date": 1718000000, "text": "Approval required: shell"}


def press(data, uid=831247519, with_message=True):
    q = {"id": "4382bfdwdsb323b2d9", "from": USER, "chat_instance": "-8329147612378",
         "data": data}
    if with_message:
        q["message"] = PROMPT
    return {"update_id": uid, "callback_query": q}


write("telegram", "press-valid", j(press(f"v1:{ID}:o")))
write("telegram", "press-abort", j(press(f"v1:{ID}:x", uid=2)))
write("telegram", "press-65-bytes", j(press("v1:" + "a" * 65 + ":o", uid=3)))
write("telegram", "press-script", j(press(f"v1:{SCRIPT}:o", uid=4)))
write("telegram", "press-old", j(press("v0:abc:o", uid=5, with_message=False)))
write("telegram", "press-no-data", j({"update_id": 6, "callback_query": {
    "id": "q", "from": USER, "chat_instance": "1"}}))
write("telegram", "approve-command", j({"update_id": 10, "message": message(
    "/approve@ApprovalBot 0B9C4D2E always")}))
write("telegram", "deny-reply", j({"update_id": 11, "message": message(
    "/deny too risky " + SCRIPT, reply=PROMPT)}))
write("telegram", "deny-word-reply", j({"update_id": 12, "message": message(
    "/deny decade of " + PINGS, reply=PROMPT, mid=7003)}))
write("telegram", "pending", j({"update_id": 13, "message": message("/pending")}))
write("telegram", "help-topic", j({"update_id": 14, "message": message(
    "/help", is_topic_message=True, message_thread_id=7)}))
write("telegram", "approve-garbage", j({"update_id": 15, "message": message(
    "/approve soon later " + EMOJI)}))
write("telegram", "bot-sender", j({"update_id": 16, "message": dict(message("/approve 0b9c4d"),
                                                                   **{"from": PROMPT["from"]})}))
write("telegram", "channel-post", j({"update_id": 17, "channel_post": PROMPT}))
write("telegram", "huge-update-id", '{"update_id": 18446744073709551615, "message": '
      + j(message("/pending")) + "}")
write("telegram", "max-i32-update-id", '{"update_id": 2147483647, "message": '
      + j(message("/pending")) + "}")
write("telegram", "huge-chat-id", j({"update_id": 19, "message": dict(
    message("/pending"), chat={"id": 99999999999999999999, "type": "private"})}))
write("telegram", "truncated", j({"update_id": 20, "message": message("/approve")})[:-20])
write("telegram", "deep-nesting", '{"update_id":21,"message":' + "[" * 3000 + "]" * 3000 + "}")
write("telegram", "invalid-utf8", b'{"update_id":22,"message":{"message_id":1,"date":0,'
                                  b'"chat":{"id":1,"type":"private"},"text":"/deny \xff\xfe"}}')
write("telegram", "long-text", j({"update_id": 23, "message": message(
    "/deny " + ID + " " + "&<" * 5000)}))
write("telegram", "not-json", "not json at all")
write("telegram", "wrong-secret", "x" + j(press(f"v1:{ID}:o", uid=24)))
write("telegram", "poll-batch", "p" + j([press(f"v1:{ID}:d", uid=25),
                                         {"update_id": 26, "message": message("/pending")},
                                         {"update_id": "x"}, None, 1]))

# ----- slack: default = form body to both routes; j = payload JSON; c = command form;
#       h = "ts\nsignature\nbody" forged ------------------------------------------------------
SLACK_USER = {"id": "U111", "username": "alice" + SCRIPT, "name": "alice", "team_id": "T1"}


def block_actions(value, action_id="approvald_approve_once", channel=True, **extra):
    p = {"type": "block_actions", "team": {"id": "T1", "domain": "x"}, "user": SLACK_USER,
         "api_app_id": "A1", "token": "tok", "trigger_id": "1.2.3",
         "response_url": "https://hooks.slack.com/actions/T1/1/x",
         "container": {"type": "message", "message_ts": "1718000000.000100",
                       "channel_id": "C0123", "is_ephemeral": False},
         "actions": [{"type": "button", "action_id": action_id, "block_id": "approvald_actions",
                      "value": value, "action_ts": "1718000001.000200",
                      "text": {"type": "plain_text", "text": "Approve once"}}]}
    if channel:
        p["channel"] = {"id": "C0123", "name": "ops"}
    p.update(extra)
    return p


def form(**kw):
    from urllib.parse import urlencode
    return urlencode(kw)


write("slack", "press-valid", "j" + j(block_actions(f"v1:{ID}:o")))
write("slack", "press-no-channel", "j" + j(block_actions(f"v1:{ID}:d", channel=False)))
write("slack", "press-bad-value", "j" + j(block_actions("v1:" + "a" * 2000 + ":o")))
write("slack", "press-script", "j" + j(block_actions(f"v1:{SCRIPT}:a")))
write("slack", "press-foreign-button", "j" + j(block_actions("x", action_id="other")))
write("slack", "view-submission", "j" + j({"type": "view_submission", "team": {"id": "T1"},
                                          "user": SLACK_USER, "view": {"id": "V1"}}))
write("slack", "unknown-type", "j" + j({"type": "shortcut_of_the_future", "x": 1}))
write("slack", "payload-truncated", "j" + j(block_actions(f"v1:{ID}:o"))[:-30])
write("slack", "payload-deep", "j" + '{"type":"block_actions","actions":' + "[" * 2000
      + "]" * 2000 + "}")
write("slack", "payload-huge-numbers", "j" + j(block_actions(f"v1:{ID}:o")).replace(
    '"1718000001.000200"', "1e400"))
write("slack", "interaction-form", form(payload=j(block_actions(f"v1:{ID}:x"))))
COMMAND = dict(team_id="T1", channel_id="C0123", user_id="U111", user_name="alice",
               response_url="https://hooks.slack.com/commands/T1/1/x", trigger_id="1")
write("slack", "command-approve", "c" + form(command="/approve", text="0b9c4d2e always looks fine",
                                              **COMMAND))
write("slack", "command-deny", "c" + form(command="/deny", text=ID + " " + SCRIPT + " " + PINGS,
                                           **COMMAND))
write("slack", "command-approve-deny", "c" + form(command="/approve", text="0b9c4d2e deny",
                                                   **COMMAND))
write("slack", "command-pending", "c" + form(command="/pending", text="", **COMMAND))
write("slack", "command-other-name", "c" + form(command="/ops", text="PENDING now", **COMMAND))
write("slack", "command-empty", "c" + form(command="/approve", text="   ", **COMMAND))
write("slack", "command-missing-fields", "c" + form(command="/approve", text="x"))
write("slack", "command-duplicate-keys", "c" + form(command="/approve", text="a", **COMMAND)
      + "&text=b&response_url=http%3A%2F%2F10.0.0.1%2F")
write("slack", "command-invalid-utf8", b"c" + form(command="/deny", **COMMAND).encode()
      + b"&text=%ff%fe+\xff\xfe+%zz%")
write("slack", "command-emoji", "c" + form(command="/deny", text="😀 " + EMOJI, **COMMAND))
write("slack", "form-garbage", "&&==&=&payload&payload=&%%%")
write("slack", "forged", "h1718000000\nv0=deadbeef\n" + form(payload=j(block_actions("x"))))
write("slack", "forged-no-prefix", "h" + "9" * 30 + "\nsha256=00\n{}")
write("slack", "forged-empty", "h\n\n")

# ----- discord: default = signed body; h = forged "ts\nsig\nbody"; t = "ts\nbody" signed -----
DUSER = {"id": "111", "username": "alice" + SCRIPT, "global_name": PINGS}


def interaction(kind, data=None, **extra):
    i = {"type": kind, "id": "900000000000000001", "token": "tok", "guild_id": "900",
         "channel_id": "700", "member": {"roles": ["55", 66, None], "user": DUSER}}
    if data is not None:
        i["data"] = data
    i.update(extra)
    return i


write("discord", "ping", j({"type": 1, "id": "1"}))
write("discord", "press-valid", j(interaction(3, {"custom_id": f"v1:{ID}:o", "component_type": 2},
                                              message={"id": "800", "channel_id": "700"})))
write("discord", "press-abort-dm", j(interaction(3, {"custom_id": f"v1:{ID}:x"}, member=None,
                                                 user={"id": 222}, guild_id=None,
                                                 message={"id": 801})))
write("discord", "press-101-bytes", j(interaction(3, {"custom_id": "v1:" + "a" * 94 + ":o"})))
write("discord", "press-no-user", j({"type": 3, "id": "1", "data": {"custom_id": f"v1:{ID}:o"}}))
write("discord", "approve", j(interaction(2, {"name": "approve", "options": [
    {"name": "id", "type": 3, "value": " 0b9c4d2e "},
    {"name": "decision", "type": 3, "value": "always"}]})))
write("discord", "approve-bad-decision", j(interaction(2, {"name": "approve", "options": [
    {"name": "id", "value": "0b9c4d2e"}, {"name": "decision", "value": SCRIPT * 10}]})))
write("discord", "deny-reason", j(interaction(2, {"name": "deny", "options": [
    {"name": "id", "value": 12345}, {"name": "reason", "value": PINGS + MD * 50}]})))
write("discord", "pending", j(interaction(2, {"name": "pending"})))
write("discord", "pending-refused", j(interaction(2, {"name": "pending"}, member={
    "user": {"id": "117"}})))
write("discord", "autocomplete", j(interaction(4, {"name": "approve", "options": [
    {"name": "id", "value": "0b", "focused": True}]})))
write("discord", "autocomplete-emoji", j(interaction(4, {"name": "approve", "options": [
    {"name": "id", "value": "😀", "focused": True}]})))
write("discord", "unknown-type", j(interaction(5)))
write("discord", "type-overflow", j(interaction(300)))
write("discord", "huge-id", '{"type":3,"id":123456789012345678901234567890,'
                            '"user":{"id":1e400},"data":{"custom_id":"v1:x:o"}}')
write("discord", "truncated", j(interaction(3, {"custom_id": f"v1:{ID}:o"}))[:-15])
write("discord", "deep-nesting", '{"type":3,"id":"1","data":' + "[" * 3000 + "]" * 3000 + "}")
write("discord", "invalid-utf8", b'{"type":2,"id":"1","user":{"id":"1"},"data":{"name":"deny",'
                                 b'"options":[{"name":"id","value":"\xff\xfe"}]}}')
write("discord", "forged", "h1718000000\n" + "00" * 64 + "\n" + j({"type": 1, "id": "1"}))
write("discord", "forged-garbage", "hnot-a-time\nzz\n{}")
write("discord", "stale-timestamp", "t1000000000\n" + j({"type": 1, "id": "1"}))
write("discord", "timestamp-text", "t 1718000000 \n" + j({"type": 1, "id": "1"}))
