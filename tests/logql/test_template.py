"""The Go template engine of ``line_format``/``label_format``, checked against Loki 3.7.6.

Two conformance files drive most cases, one test per row (the row id is the test id):

* ``template_func_cases.jsonl``: ``| line_format "{{ <function> <args> }}"`` as Loki ran
  it. The output must be ``loki_line``; where Loki's template failed, rendering must
  raise :class:`TemplateError` whose message is Loki's ``__error_details__``.
* ``eval_cases.jsonl``, the ``Test_lineFormatter_Format`` and
  ``Test_labelsFormatter_Format`` rows: each template of the stage is rendered with the
  pushed labels, line and timestamp, and must give the line (or label value) Loki
  returned. Only rendering is tested; renames and ``__error__`` labels belong to the
  pipeline.

Byte-level comparison: ``trunc``/``substr`` cut UTF-8 sequences, so Loki's line held
bytes that are not UTF-8, and Loki's JSON response shows one U+FFFD per such byte (Go's
``encoding/json``). The engine returns those bytes as lone surrogates
(``surrogateescape``); :func:`go_json_text` decodes the engine's bytes the way Go's
JSON encoder does before comparing.

The rest are hand-computed cases for every control structure, the fmt verbs, literals,
Loki's function map and Go's error messages.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from loki_async.errors import BadRequest, http_status
from loki_async.logql.literals import unquote
from loki_async.logql.template import Template, TemplateError

CONFORMANCE = Path("/work/shared/conformance/logql")
LABELS = {"foo": "blip", "bar": "blop", "n": "42", "f": "2.5", "empty": ""}
TS = 1661518453244672570  # 2022-08-26 12:54:13.24467257 UTC, a Friday, day 238


def render(text: str, labels: dict[str, str] | None = None, line: str = "the line") -> str:
    return Template(text).render(LABELS if labels is None else labels, line, TS)


def failure(text: str, name: str = "line") -> str:
    """Go's message for a template that fails to parse or to execute."""
    with pytest.raises(TemplateError) as info:
        Template(text, name).render(LABELS, "the line", TS)
    return info.value.message


def go_json_text(data: bytes) -> str:
    """Bytes as Go's ``encoding/json`` shows them: each byte that does not start a
    valid UTF-8 sequence becomes one U+FFFD."""
    out, i = [], 0
    while i < len(data):
        for size in (1, 2, 3, 4):
            try:
                out.append(data[i : i + size].decode("utf-8"))
            except UnicodeDecodeError:
                continue
            i += size
            break
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


def rows(name: str) -> list[dict[str, Any]]:
    with (CONFORMANCE / name).open() as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------
# Conformance: template_func_cases.jsonl
# ---------------------------------------------------------------------------

FUNC_ROWS = rows("template_func_cases.jsonl")


@pytest.mark.parametrize("row", FUNC_ROWS, ids=[r["id"] for r in FUNC_ROWS])
def test_function_row_renders_what_loki_returned(row: dict[str, Any]) -> None:
    text = row["loki_query"].split("line_format `", 1)[1].rsplit("`", 1)[0]
    details = row["loki_parsed_labels"].get("__error_details__")
    template = Template(text)
    if details is not None:
        with pytest.raises(TemplateError) as info:
            template.render({}, row["loki_line"], 0)
        assert info.value.message == details
        return
    out = template.render({}, "template check", 0)
    assert go_json_text(out.encode("utf-8", "surrogateescape")) == row["loki_line"]


# ---------------------------------------------------------------------------
# Conformance: the line and label formatter rows of eval_cases.jsonl
# ---------------------------------------------------------------------------

FORMAT_ROWS = [
    r
    for r in rows("eval_cases.jsonl")
    if "Test_lineFormatter_Format" in r["source"] or "Test_labelsFormatter_Format" in r["source"]
]
_LABEL_FORMAT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|`[^`]*`|\w+)')


def formatter_cases() -> list[Any]:
    """(row id, template name, template text, labels, line, ts, wanted output or error)."""
    cases = []
    for r in FORMAT_ROWS:
        push = r["loki_push"]
        labels = {k: v for k, v in push["labels"].items() if k != "case_id" and v != ""}
        categorized = r["loki_labels_categorized"]
        details = categorized["parsed"].get("__error_details__")
        stage = r["stage"]
        if stage.startswith("| line_format "):
            text = unquote(stage.removeprefix("| line_format "))
            want = ("error", details) if details else ("out", r["loki_line"])
            cases.append(pytest.param("line", text, labels, push, want, id=r["id"]))
            continue
        result = categorized["stream"] | categorized["parsed"]
        current = dict(labels)  # renames before the first template change what it sees
        for name, value in _LABEL_FORMAT.findall(stage.removeprefix("| label_format ")):
            if value[0] not in '"`':
                if value in current:
                    current[name] = current.pop(value)
                continue
            want = ("error", details) if details else ("out", result[name])
            text = unquote(value)
            param = pytest.param("label", text, dict(current), push, want, id=f"{r['id']}-{name}")
            cases.append(param)
    return cases


@pytest.mark.parametrize(("name", "text", "labels", "push", "want"), formatter_cases())
def test_formatter_row_renders_what_loki_returned(
    name: str, text: str, labels: dict[str, str], push: dict[str, Any], want: tuple[str, str]
) -> None:
    template = Template(text, name)
    if want[0] == "error":
        with pytest.raises(TemplateError) as info:
            template.render(labels, push["line"], push["timestamp_ns"])
        assert info.value.message == want[1]
    else:
        assert template.render(labels, push["line"], push["timestamp_ns"]) == want[1]


def test_formatter_rows_are_all_used() -> None:
    assert len(FORMAT_ROWS) == 59
    assert len(formatter_cases()) == 59  # one template each


# ---------------------------------------------------------------------------
# The public interface
# ---------------------------------------------------------------------------


def test_missing_label_renders_as_empty_string() -> None:
    # Loki executes with missingkey=zero over a map[string]string: the zero string.
    assert render("[{{ .missing }}]") == "[]"
    assert render("{{ .missing | printf `%q` }}") == '""'
    assert render("{{ printf `%T` .missing }}") == "string"
    assert render("[{{ index . `missing` }}]") == "[]"
    assert render("{{ if .missing }}set{{ else }}unset{{ end }}") == "unset"


def test_template_error_is_a_bad_request() -> None:
    with pytest.raises(TemplateError) as info:
        Template("{{ nope }}")
    assert isinstance(info.value, BadRequest)
    assert http_status(info.value) == (400, 'template: line:1: function "nope" not defined')


def test_fields_are_the_labels_loki_lists_as_required() -> None:
    text = "{{ .a }}{{ if .b }}{{ .c | ToUpper }}{{ end }}{{ (.d) }}{{ .e.f }}{{ $.g }}"
    text += "{{ with $x := .h }}{{ end }}{{ range .i }}{{ else }}{{ .j }}{{ end }}"
    assert Template(text).fields == frozenset("abcdefhij")  # not $.g: Loki skips variables
    assert Template("plain").fields == frozenset()


def test_uses_line_tells_whether_the_template_calls_line() -> None:
    assert Template("{{ __line__ | ToUpper }}").uses_line
    assert Template('{{ define "x" }}{{ __line__ }}{{ end }}').uses_line
    assert not Template("{{ .foo }} line").uses_line


def test_line_and_timestamp_come_from_the_render_call() -> None:
    template = Template("{{ __line__ }}@{{ __timestamp__ | unixEpochNanos }}")
    assert template.render({}, "a", 5) == "a@5"
    assert template.render({}, "b", -1) == "b@-1"


def test_constant_template_renders_its_text() -> None:
    assert render("plain text") == "plain text"
    assert render("") == ""
    assert render("a{{/* comment */}}b") == "ab"


def test_errors_name_the_template_and_the_position() -> None:
    assert failure("x\nab {{ div 1 0 }}", name="label") == (
        'template: label:2:6: executing "label" at <div 1 0>: '
        "error calling div: runtime error: integer divide by zero"
    )
    assert failure("{{ if true }}\n{{ end") == "template: line:2: unclosed action"
    # Inside a defined template, execution errors name that template.
    assert failure('{{ define "d" }}{{ div 1 0 }}{{ end }}{{ template "d" }}') == (
        'template: line:1:19: executing "d" at <div 1 0>: '
        "error calling div: runtime error: integer divide by zero"
    )


# ---------------------------------------------------------------------------
# Text, actions, literals
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("a  {{- .foo -}}  b", "ablipb"),
        ("a {{- /* c */ -}}\n b", "ab"),
        ("{{ 3 -}} \n x", "3x"),
        ("{{-3}}", "-3"),
        ("{{- 3}}", "3"),
        ("x{{/* a\nmultiline comment */}}y", "xy"),
        ("{{ `raw \\n` }}", "raw \\n"),
        ("{{ `a\rb` }}", "ab"),  # carriage returns vanish from raw strings
        ('{{ "tab\\there \\u00e9 \\x41" }}', "tab\there é A"),
        ("{{ 'a' }} {{ '\\n' }} {{ '\\x41' }} {{ '\\u00e9' }} {{ 'é' }}", "97 10 65 233 233"),
        (
            "{{ 42 }} {{ -7 }} {{ +7 }} {{ 0x1F }} {{ 0X1f }} {{ 0o17 }} {{ 017 }}",
            "42 -7 7 31 31 15 15",
        ),
        ("{{ 0b101 }} {{ 1_000 }} {{ 0x_ff }}", "5 1000 255"),
        (
            "{{ 1.5 }} {{ .5 }} {{ 5. }} {{ 1e3 }} {{ 1e6 }} {{ 1.5e-7 }} {{ 0x1p-2 }}",
            "1.5 0.5 5 1000 1e+06 1.5e-07 0.25",
        ),
        ("{{ 2i }} {{ 1+2i }} {{ 1.5-0.5i }}", "(0+2i) (1+2i) (1.5-0.5i)"),
        ("{{ true }} {{ false }} {{ print nil }}", "true false <nil>"),
        ("{{ . }}", "map[bar:blop empty: f:2.5 foo:blip n:42]"),
        ("{{ $ }}", "map[bar:blop empty: f:2.5 foo:blip n:42]"),
        ("{{ (.foo) }} {{ (print .bar) }}", "blip blop"),
        ("{{ fromJson `bad` }}", "<no value>"),
    ],
)
def test_text_actions_and_literals(text: str, want: str) -> None:
    assert render(text) == want


# ---------------------------------------------------------------------------
# Control structures and variables
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("{{ if .foo }}yes{{ end }}", "yes"),
        ("{{ if .empty }}yes{{ else }}no{{ end }}", "no"),
        ("{{ if .missing }}a{{ else if .empty }}b{{ else if .foo }}c{{ else }}d{{ end }}", "c"),
        ("{{ with .foo }}<{{ . }}>{{ end }}", "<blip>"),
        ("{{ with .empty }}x{{ else }}none{{ end }}", "none"),
        ("{{ with .empty }}x{{ else with .bar }}{{ . }}{{ end }}", "blop"),
        ("{{ with .foo }}{{ $.bar }}{{ end }}", "blop"),
        ("{{ with $x := .foo }}{{ $x }}{{ . }}{{ end }}", "blipblip"),
        ('{{ range $i, $e := fromJson `["a","b"]` }}{{ $i }}:{{ $e }} {{ end }}', "0:a 1:b "),
        ("{{ range fromJson `[1,2]` }}{{ . }}{{ end }}", "12"),
        ("{{ range $v := fromJson `[1,2]` }}{{ $v }}{{ end }}", "12"),
        ('{{ range $k, $v := fromJson `{"b":2,"a":1}` }}{{ $k }}={{ $v }} {{ end }}', "a=1 b=2 "),
        (
            "{{ range $k, $v := . }}{{ $k }}={{ $v }};{{ end }}",
            "bar=blop;empty=;f=2.5;foo=blip;n=42;",
        ),
        ("{{ range 3 }}{{ . }}{{ end }}", "012"),
        ("{{ range $i := 0 }}x{{ else }}none{{ end }}", "none"),
        ("{{ range fromJson `{}` }}x{{ else }}empty{{ end }}", "empty"),
        ("{{ range fromJson `null` }}x{{ else }}nil{{ end }}", "nil"),
        ("{{ range $x := fromJson `[]` }}{{ else }}{{ $x }}{{ end }}", "[]"),
        (
            "{{ range fromJson `[1,2,3,4]` }}{{ if eq . 3.0 }}{{ break }}{{ end }}{{ . }}{{ end }}",
            "12",
        ),
        ("{{ range 4 }}{{ if eq . 1 }}{{ continue }}{{ end }}{{ . }}{{ end }}", "023"),
        ("{{ range 2 }}{{ range 2 }}{{ break }}{{ end }}x{{ end }}", "xx"),
        ("{{ $x := .foo }}{{ $x }}-{{ $x = .bar }}{{ $x }}", "blip-blop"),
        ("{{ $x := 1 }}{{ range 2 }}{{ $x := 5 }}{{ $x }}{{ end }}{{ $x }}", "551"),
        ("{{ $n := 0 }}{{ range 3 }}{{ $n = add $n 1 }}{{ end }}{{ $n }}", "3"),
        ("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}", "2"),
        ("{{ if $x := .foo }}{{ $x }}{{ else }}{{ $x }}!{{ end }}", "blip"),
        ("{{ $x := 1 }}{{ $x := $x }}{{ $x }}", "1"),
        ('{{ define "greet" }}hi {{ . }}{{ end }}{{ template "greet" .foo }}', "hi blip"),
        ('{{ define "x" }}[{{ . }}]{{ end }}{{ template "x" }}', "[<no value>]"),
        ('{{ define "x" }}{{ $ }}{{ end }}{{ $y := 1 }}{{ template "x" .bar }}', "blop"),
        ('{{ block "b" .foo }}<{{ . }}>{{ end }}', "<blip>"),
        ('{{ define "line" }}replaced{{ end }}', "replaced"),  # an empty main gives way
    ],
)
def test_control_structures_and_variables(text: str, want: str) -> None:
    assert render(text) == want


@pytest.mark.parametrize(
    ("value", "truth"),
    [
        ("0", False),
        ("1", True),
        ("-1", True),
        ("0.0", False),
        ("0.5", True),
        ("0i", False),
        ('""', False),
        ('"0"', True),
        ("true", True),
        ("false", False),
        ("fromJson `[]`", False),
        ("fromJson `[0]`", True),
        ("fromJson `{}`", False),
        ("fromJson `null`", False),
        ("__timestamp__", True),  # structs are always true
        ("toDate `2006` `x`", True),
        (".", True),
    ],
)
def test_truthiness_follows_go(value: str, truth: bool) -> None:
    assert render(f"{{{{ if {value} }}}}T{{{{ else }}}}F{{{{ end }}}}") == ("T" if truth else "F")
    assert render(f"{{{{ not ({value}) }}}}") == ("false" if truth else "true")


# ---------------------------------------------------------------------------
# Builtins
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("{{ and 1 0 2 }}|{{ and 1 2 }}|{{ or 0 `` `x` }}|{{ or 0 `` }}", "0|2|x|"),
        ("{{ .foo | and 1 }}|{{ .empty | or 0 }}", "blip|"),
        ("{{ and false (div 1 0) }}", "false"),  # short-circuit: div is never called
        ("{{ not 0 }} {{ not `a` }}", "true false"),
        ("{{ eq 1 1 }} {{ eq .foo `a` `b` `blip` }} {{ eq .foo `a` }}", "true true false"),
        ("{{ eq 1.5 1.5 }} {{ eq true true }} {{ eq (index `a` 0) 97 }}", "true true true"),
        ("{{ eq (fromJson `{}`).x `a` }} {{ eq .foo nil }} {{ eq nil nil }}", "false false true"),
        ("{{ eq __timestamp__ __timestamp__ }} {{ eq now now }}", "true false"),
        ("{{ ne 1 2 }} {{ ne `a` `a` }}", "true false"),
        (
            "{{ lt 1 2 }} {{ lt `b` `a` }} {{ le 2 2 }} {{ gt 3 2 }} {{ ge 2.5 3.5 }}",
            "true false true true false",
        ),
        ("{{ lt (add 1 1) 3 }} {{ gt (len `abc`) 2 }}", "true true"),
        ("{{ len .foo }} {{ len `世界` }} {{ len (fromJson `[1,2]`) }} {{ len . }}", "4 6 2 5"),
        (
            "{{ index . `foo` }} {{ index (fromJson `[[1,2],[3]]`) 0 1 }} {{ index `abc` 1 }}",
            "blip 2 98",
        ),
        (
            '{{ index (fromJson `{"a":{"b":"c"}}`) `a` `b` }} {{ index . }}',
            "c map[bar:blop empty: f:2.5 foo:blip n:42]",
        ),
        (
            "{{ slice `hello` 1 3 }} {{ slice `hello` 2 }} {{ slice (fromJson `[1,2,3]`) 1 }}",
            "el llo [2 3]",
        ),
        ("{{ print `a` 1 2 `b` 3.5 }}|{{ println `a` 1 }}|{{ print }}", "a1 2b3.5|a 1\n|"),
        ("{{ html `<a href='x'>&\"` }}", "&lt;a href=&#39;x&#39;&gt;&amp;&#34;"),
        ("{{ js `a'b\"<>&=\\` }}", "a\\'b\\\"\\u003C\\u003E\\u0026\\u003D\\\\"),
        ("{{ urlquery `a b&c` }} {{ html 1 2 }}", "a+b%26c 1 2"),
    ],
)
def test_builtins(text: str, want: str) -> None:
    assert render(text) == want


@pytest.mark.parametrize(
    ("args", "want"),
    [
        ("`%s|%v|%q` .foo .foo .foo", 'blip|blip|"blip"'),
        ("`%d|%5d|%-5d|%05d|%+d|% d` 42 42 42 -42 5 5", "42|   42|42   |-0042|+5| 5"),
        ("`%x|%X|%#x|%o|%O|%#o|%b` 255 255 255 8 8 8 5", "ff|FF|0xff|10|0o10|010|101"),
        ("`%c|%q|%U|%#U` 65 65 65 9731", "A|'A'|U+0041|U+2603 '☃'"),
        ("`%.3d|%.0d|` 7 0", "007||"),
        (
            "`%f|%.2f|%8.3f|%-8.3f|%08.3f|%+.1f` 3.14159 3.14159 3.14159 3.14159 -3.14159 2.0",
            "3.141590|3.14|   3.142|3.142   |-003.142|+2.0",
        ),
        (
            "`%e|%E|%.2e|%g|%G|%.3g` 1234.5678 1234.5678 1234.5678 1234.5678 1e21 1234.5678",
            "1.234568e+03|1.234568E+03|1.23e+03|1234.5678|1E+21|1.23e+03",
        ),
        ("`%v %v %v %v %v` 1e6 1e-5 123456.0 1234567.0 -0.0", "1e+06 1e-05 123456 1.234567e+06 -0"),
        ("`%.0f %.0f %.1f` 2.5 3.5 0.05", "2 4 0.1"),
        ("`%5s|%-5s|%.2s|%5.1s|%05s` `ab` `ab` `abc` `xyz` `ab`", "   ab|ab   |ab|    x|000ab"),
        ("`%x|% x|%#x|%X` `hi` `hi` `hi` `hi`", "6869|68 69|0x6869|6869"),
        ('`%q|%+q|%#q` `a"b` `é` `raw`', '"a\\"b"|"\\u00e9"|`raw`'),
        ("`%t|%v|%6t|` true false true", "true|false|  true|"),
        (
            '`%v|%d|%s` (fromJson `[1,"a"]`) (fromJson `[1]`) (fromJson `["x"]`)',
            "[1 a]|[%!d(float64=1)]|[x]",
        ),
        (
            '`%v|%#v` (fromJson `{"b":1,"a":"x"}`) (fromJson `{"a":null}`)',
            'map[a:x b:1]|map[string]interface {}{"a":interface {}(nil)}',
        ),
        (
            "`%T %T %T %T %T %T %T` 1 1.5 `s` true (add 1 2) __timestamp__ nil",
            "int float64 string bool int64 time.Time <nil>",
        ),
        (
            "`%v|%s|%d` __timestamp__.Month __timestamp__.Weekday __timestamp__.Month",
            "August|Friday|8",
        ),
        ("`%#v|%#v|%#v` `a` 1 1.5", '"a"|1|1.5'),
        ("`%x|%X|%b` 1.0 255.5 1.0", "0x1p+00|0X1.FFP+07|4503599627370496p-52"),
        ("`%v|%.2f|%5.1v|%5.2v` (add 1 2) 2.0i 3.14159 3.14159", "3|(0.00+2.00i)|    3|  3.1"),
        ("`100%%|%[2]s %[1]s|%s` `a` `b`", "100%|b a|b"),
        ("`%*d|%-*d|%.*f|%-*d` 4 7 3 7 1 2.26 -3 1", "   7|7  |2.3|1  "),
        ("`%[1]*d|%*d` 3 5 `x` 1", "  5|%!(BADWIDTH)1"),
        ("`%d %s` 1", "1 %!s(MISSING)"),
        ("`%d` 1 2", "1%!(EXTRA int=2)"),
        ("`%d|%s|%t` `x` 1 nil", "%!d(string=x)|%!s(int=1)|%!t(<nil>)"),
        ("`%!|%z|%` 1", "%!!(int=1)|%!z(MISSING)|%!(NOVERB)"),
        ("`%[3]d|%[0]d` 1", "%!d(BADINDEX)|%!d(BADINDEX)"),
        ("`%.*d` `x` 1", "%!(BADPREC)1"),
    ],
)
def test_printf_follows_go_fmt(args: str, want: str) -> None:
    assert render(f"{{{{ printf {args} }}}}") == want


# ---------------------------------------------------------------------------
# Loki's function map
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # Go's strings functions under Loki's old names
        (
            "{{ ToLower `HeLLo` }} {{ ToUpper `HeLLo` }} {{ `x` | ToUpper | ToLower }}",
            "hello HELLO x",
        ),
        (
            "{{ Replace `aaa` `a` `b` 2 }} {{ Replace `aaa` `a` `b` -1 }}"
            " {{ Replace `ab` `` `-` -1 }}",
            "bba bbb -a-b-",
        ),
        (
            "{{ Trim `xxaxx` `x` }} {{ TrimLeft `xxaxx` `x` }} {{ TrimRight `xxaxx` `x` }}",
            "a axx xxa",
        ),
        (
            "{{ TrimPrefix `xxaxx` `x` }} {{ TrimSuffix `xxaxx` `x` }} "
            '[{{ TrimSpace "\\t a b \\n" }}]',
            "xaxx xxax [a b]",
        ),
        # Loki's own
        (
            "{{ regexReplaceAll `a(x*)b` `-ab-axxb-` `${1}W` }}"
            " {{ regexReplaceAll `a(x*)b` `-ab-axxb-` `$1W` }}",
            "-W-xxW- ---",
        ),
        (
            "{{ regexReplaceAll `(?P<first>b)(l)` .foo `${2}${first}$$` }}"
            " {{ regexReplaceAll `x*` `abc` `-` }}",
            "lb$ip -a-b-c-",
        ),
        ("{{ regexReplaceAllLiteral `a(x*)b` `-ab-axxb-` `${1}` }}", "-${1}-${1}-"),
        (
            "{{ regexReplaceAll `(?i)B` .foo `` }} {{ regexReplaceAll `\\d+` `a12b3` `#` }}",
            "lip a#b#",
        ),
        (
            "{{ count `a|b` `abab` }} {{ count `o` `foo` }} {{ count `x*` `abc` }}"
            " {{ count `z` `` }}",
            "4 2 4 0",
        ),
        ("{{ urlencode `a b/c?d=é&e+f` }}", "a+b%2Fc%3Fd%3D%C3%A9%26e%2Bf"),
        ("{{ urldecode `a+b%2Fc%C3%A9` }}", "a b/cé"),
        (
            "{{ bytes `3 kB` }} {{ bytes `1KiB` }} {{ bytes `2.5MB` }} {{ bytes `42` }}",
            "3000 1024 2.5e+06 42",
        ),
        (
            "{{ duration `3ms` }} {{ duration_seconds `1h30m` }} {{ duration `-1.5s` }}"
            " {{ duration `0` }}",
            "0.003 5400 -1.5 0",
        ),
        (
            "{{ __timestamp__ | unixEpochMillis }} {{ __timestamp__ | unixEpochNanos }}",
            "1661518453244 1661518453244672570",
        ),
        ("{{ toDateInZone `2006-01-02` `UTC` `2021-11-02` | unixEpoch }}", "1635811200"),
        (
            "{{ toDateInZone `2006-01-02 15:04` `Europe/Paris` `2021-07-01 12:00` }}",
            "2021-07-01 12:00:00 +0200 CEST",
        ),
        (
            "{{ toDateInZone `2006-01-02 15:04` `Europe/Paris` `2021-07-01 12:00` | unixEpoch }}",
            "1625133600",
        ),
        (
            "{{ toDateInZone `2006-01-02` `No/Such_Zone` `2021-11-02` }}",
            "2021-11-02 00:00:00 +0000 UTC",
        ),
        (
            "{{ unixToTime `1673798889` }}|{{ unixToTime `19373` }}",
            "2023-01-15 16:08:09 +0000 UTC|2023-01-16 00:00:00 +0000 UTC",
        ),
        (
            "{{ unixToTime `1673798889902` }}|{{ unixToTime `1673798889902001` | unixEpochNanos }}",
            "2023-01-15 16:08:09.902 +0000 UTC|1673798889902001000",
        ),
        ("{{ unixToTime `1673798889902001234` | unixEpochNanos }}", "1673798889902001234"),
        (
            "[{{ alignLeft 5 `hi` }}][{{ alignRight 5 `hi` }}][{{ alignLeft 2 `世界hello` }}]"
            "[{{ alignRight 3 `hello` }}]",
            "[hi   ][   hi][世界][llo]",
        ),
        ("{{ __line__ }} {{ __line__ | len }}", "the line 8"),
        # sprig
        (
            "{{ b64enc `hi é` }} {{ b64dec `aGkgw6k=` }} {{ b64dec `aGk` }} {{ b64dec `a$` }}",
            "aGkgw6k= hi é illegal base64 data at input byte 0 illegal base64 data at input byte 1",
        ),
        (
            "{{ lower `ÀÉ İ` }} {{ upper `straße é` }} {{ title `hello wORLD foo_bar x-y` }}",
            "àé i STRAßE É Hello WORLD Foo_bar X-Y",
        ),
        (
            "{{ trunc 3 `hello` }} {{ trunc -3 `hello` }} {{ trunc 10 `hi` }} {{ trunc 0 `hi` }}",
            "hel llo hi ",
        ),
        (
            "{{ substr 1 3 `hello` }} {{ substr -1 2 `hello` }} {{ substr 3 -1 `hello` }}"
            " {{ substr 2 10 `hello` }}",
            "el he lo llo",
        ),
        (
            "{{ contains `ll` `hello` }} {{ hasPrefix `he` `hello` }}"
            " {{ hasSuffix `lo` `hello` }} {{ contains `z` `x` }}",
            "true true true false",
        ),
        (
            '[{{ indent 2 "a\\nb" }}][{{ nindent 2 `a` }}][{{ repeat 3 `ab` }}]'
            "[{{ replace `-` `_` `a-b-c` }}]",
            "[  a\n  b][\n  a][ababab][a_b_c]",
        ),
        (
            "[{{ trim `  a  ` }}][{{ trimAll `$` `$5.00$` }}][{{ trimPrefix `-` `-a-` }}]"
            "[{{ trimSuffix `-` `-a-` }}]",
            "[a][5.00][a-][-a]",
        ),
        (
            "{{ `3` | int }} {{ int `12.0` }} {{ int `12.5` }} {{ int 3.9 }} {{ int true }}"
            " {{ int `0x10` }} {{ int `x` }}",
            "3 12 0 3 1 16 0",
        ),
        (
            "{{ `3.5` | float64 }} {{ float64 2 }} {{ float64 `1e3` }} {{ float64 `x` }}",
            "3.5 2 1000 0",
        ),
        (
            "{{ add 3 2 5 }} {{ add }} {{ add 1 `2` 3.7 }} {{ sub 5 2 }} {{ sub 10 `x` }}",
            "10 0 6 3 10",
        ),
        (
            "{{ mul 5 2 3 }} {{ div 10 2 }} {{ div -7 2 }} {{ mod 10 3 }} {{ mod -7 2 }}",
            "30 5 -3 1 -1",
        ),
        (
            "{{ addf 3.5 2 5 }} {{ addf 0.1 0.2 }} {{ subf 5.5 2 1.5 }} {{ mulf 5.5 2 2.5 }}",
            "10.5 0.3 2 27.5",
        ),
        (
            "{{ divf 10 2 4 }} {{ divf 1 3 }} {{ divf 2 3 }} {{ addf }}",
            "1.25 0.3333333333333333 0.6666666666666667 0",
        ),
        ("{{ max 1 2 3 }} {{ min 1 2 3 }} {{ max 1 `5` 3 }} {{ min `0x10` 3 }}", "3 1 5 3"),
        (
            "{{ maxf 1 2.5 3 }} {{ minf 1 2.5 3 }} {{ maxf 1 2.5 `3.5` }} {{ minf `abc` 2 }}",
            "3 1 3.5 0",
        ),
        (
            "{{ ceil 123.001 }} {{ floor 123.9999 }} {{ ceil -0.5 }} {{ floor `-1.5` }}",
            "124 123 -0 -2",
        ),
        (
            "{{ round 123.555555 3 }} {{ round 123.88571428571 5 .2 }} {{ round -2.5 0 }}"
            " {{ round 2.5 0 }}",
            "123.556 123.88572 -3 3",
        ),
        (
            "{{ round `NaN` 2 }} {{ round `-Inf` 1 }} {{ ceil `+Inf` }} {{ floor `NaN` }}",
            "NaN -Inf +Inf NaN",
        ),
        (
            '{{ fromJson `{"foo": 55}` }} {{ (fromJson `{"foo": 55}`).foo }}'
            ' {{ fromJson `[1.5, true, "s", null]` }}',
            "map[foo:55] 55 [1.5 true s <nil>]",
        ),
        (
            '{{ fromJson `1e400` }} {{ fromJson `NaN` }} {{ fromJson `"s"` }}'
            ' {{ fromJson `{"a":1,"a":2}` }}',
            "<no value> <no value> s map[a:2]",
        ),
        (
            "{{ default `x` `` }} {{ default `x` `y` }} {{ default `x` 0 }} {{ default `x` }}"
            " {{ .empty | default `d` }}",
            "x y x x d",
        ),
        (
            "{{ default `x` (fromJson `[]`) }} {{ default `x` false }}"
            " {{ default `x` __timestamp__ | unixEpoch }}",
            "x x 1661518453",
        ),
        (
            "{{ date `2006-01-02` (toDate `2006-01-02` `2021-11-02`) }} {{ date `2006` 0 }}"
            " {{ date `2006` (add 86400 0) }}",
            "2021-11-02 1970 1970",
        ),
        (
            "{{ toDate `2006-01-02` `2021-11-02` }}|{{ toDate `2006-01-02` `2021-02-30` }}",
            "2021-11-02 00:00:00 +0000 UTC|0001-01-01 00:00:00 +0000 UTC",
        ),
        ("{{ sub (unixEpoch now) (unixEpoch now) }} {{ date `2006` now | len }}", "0 4"),
    ],
)
def test_loki_functions(text: str, want: str) -> None:
    assert render(text) == want


def test_byte_based_functions_cut_runes_and_keep_the_bytes() -> None:
    out = render("{{ trunc 1 `é` }}|{{ substr 0 1 `é` }}|{{ slice `é` 1 }}|{{ b64dec `/w==` }}")
    assert out.encode("utf-8", "surrogateescape") == b"\xc3|\xc3|\xa9|\xff"
    # Rune-based functions turn such bytes into U+FFFD, as Go's []rune does.
    assert render("{{ alignRight 1 (trunc 2 `aé`) }}") == "\ufffd"
    assert render("{{ trunc 2 `aé` | ToUpper }}") == "A\ufffd"


def test_now_prints_its_monotonic_clock_reading() -> None:
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \+0000 UTC m=\+\d+\.\d{9}", render("{{ now }}")
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", render("{{ now | date `2006-01-02` }}"))


# ---------------------------------------------------------------------------
# Time values: layouts and methods
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "want"),
    [
        ("2006-01-02T15:04:05.000Z07:00", "2022-08-26T12:54:13.244Z"),
        ("2006-01-02T15:04:05.999999999Z07:00", "2022-08-26T12:54:13.24467257Z"),
        ("Mon Jan _2 3:04:05 PM MST 2006", "Fri Aug 26 12:54:13 PM UTC 2022"),
        ("Monday, 02-Jan-06 15h04 pm", "Friday, 26-Aug-22 12h54 pm"),
        ("Mon, 02 Jan 2006 15:04:05 -0700", "Fri, 26 Aug 2022 12:54:13 +0000"),
        ("-07:00 -07 Z0700 Z07 -070000", "+00:00 +00 Z Z +000000"),
        ("January 1 01 2 _2 002 __2 06", "August 8 08 26 26 238 238 22"),
        ("15 3 03 4 04 5 05 .000000 ,999 .9", "12 12 12 54 54 13 13 .244672 ,244 .2"),
        ("Jant Mond 2006_2006", "Jant Mond 2022_2022"),  # lower case after Jan/Mon: literal
        ("no elements", "no elements"),
    ],
)
def test_date_formats_go_layouts(layout: str, want: str) -> None:
    assert render(f"{{{{ __timestamp__ | date `{layout}` }}}}") == want
    assert render(f"{{{{ __timestamp__.Format `{layout}` }}}}") == want


@pytest.mark.parametrize(
    ("layout", "value", "want"),
    [
        ("2006-01-02T15:04:05Z07:00", "2021-11-02T10:20:30Z", "2021-11-02 10:20:30 +0000 UTC"),
        (
            "2006-01-02T15:04:05Z07:00",
            "2021-11-02T10:20:30+02:00",
            "2021-11-02 10:20:30 +0200 +0200",
        ),
        ("2006-01-02 15:04:05 MST", "2021-11-02 10:20:30 CET", "2021-11-02 10:20:30 +0000 CET"),
        (
            "2006-01-02T15:04:05.999999999Z",
            "2023-03-10T01:32:40.340485723Z",
            "2023-03-10 01:32:40.340485723 +0000 UTC",
        ),
        ("2006-01-02 15:04:05", "2023-03-10 01:32:40.5", "2023-03-10 01:32:40.5 +0000 UTC"),
        ("Jan _2 15:04:05.000", "Nov  2 10:20:30.123", "0000-11-02 10:20:30.123 +0000 UTC"),
        ("02/01/06 3:04PM", "02/11/21 3:04PM", "2021-11-02 15:04:00 +0000 UTC"),
        ("02/01/06 3:04pm", "02/11/21 12:04am", "2021-11-02 00:04:00 +0000 UTC"),
        ("2006 002", "2020 060", "2020-02-29 00:00:00 +0000 UTC"),
        ("Monday January 2 2006", "friday NOVEMBER 5 2021", "2021-11-05 00:00:00 +0000 UTC"),
        ("2006-01-02", "2021-02-30", "0001-01-01 00:00:00 +0000 UTC"),  # day out of range
        ("2006-01-02", "2021-11-02 extra", "0001-01-01 00:00:00 +0000 UTC"),
        ("15:04", "25:00", "0001-01-01 00:00:00 +0000 UTC"),
    ],
)
def test_to_date_parses_go_layouts(layout: str, value: str, want: str) -> None:
    assert render(f"{{{{ toDate `{layout}` `{value}` }}}}") == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("{{ __timestamp__ }}", "2022-08-26 12:54:13.24467257 +0000 UTC"),
        (
            "{{ __timestamp__.Year }}-{{ __timestamp__.Month }}-{{ __timestamp__.Day }}",
            "2022-August-26",
        ),
        (
            "{{ __timestamp__.Hour }}:{{ __timestamp__.Minute }}:{{ __timestamp__.Second }}",
            "12:54:13",
        ),
        (
            "{{ __timestamp__.Weekday }} {{ __timestamp__.YearDay }}"
            " {{ __timestamp__.Nanosecond }}",
            "Friday 238 244672570",
        ),
        (
            "{{ __timestamp__.Unix }} {{ __timestamp__.UnixMilli }} {{ __timestamp__.UnixNano }}",
            "1661518453 1661518453244 1661518453244672570",
        ),
        (
            "{{ (__timestamp__.Add 3600000000000).Hour }} {{ __timestamp__.AddDate 0 1 -26 }}",
            "13 2022-08-31 12:54:13.24467257 +0000 UTC",
        ),
        (
            "{{ __timestamp__.Truncate 3600000000000 }}|{{ __timestamp__.Round 60000000000 }}",
            "2022-08-26 12:00:00 +0000 UTC|2022-08-26 12:54:00 +0000 UTC",
        ),
        (
            "{{ $d := (toDate `2006` `2020`).Sub (toDate `2006` `2019`) }}{{ $d }} {{ $d.Hours }}",
            "8760h0m0s 8760",
        ),
        (
            "{{ (toDate `2006` `x`).IsZero }} {{ __timestamp__.IsZero }} {{ __timestamp__.UTC }}",
            "true false 2022-08-26 12:54:13.24467257 +0000 UTC",
        ),
        (
            "{{ __timestamp__.Before now }} {{ __timestamp__.After now }}"
            " {{ __timestamp__.Equal __timestamp__ }}",
            "true false true",
        ),
        (
            "{{ printf `%#v` __timestamp__ }}",
            "time.Date(2022, time.August, 26, 12, 54, 13, 244672570, time.Local)",
        ),
    ],
)
def test_time_values(text: str, want: str) -> None:
    assert render(text) == want


# ---------------------------------------------------------------------------
# Errors, in Go's words
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ nope }}", 'function "nope" not defined'),
        ("{{ sha256 .foo }}", 'function "sha256" not defined'),
        ("{{", "unclosed action"),
        ("{{ .foo }", 'unexpected "}" in operand'),
        ("{{ if .foo }}x", "unexpected EOF"),
        ("{{ end }}", "unexpected {{end}}"),
        ("{{ else }}", "unexpected {{else}}"),
        ("{{ if 1 }}{{ else }}{{ else }}{{ end }}", "expected end; found {{else}}"),
        ('{{ "abc }}', "unterminated quoted string"),
        ("{{ `abc }}", "unterminated raw quoted string"),
        ("{{ 'ab' }}", "malformed character constant: 'ab'"),
        ("{{ '' }}", "invalid syntax"),
        ('{{ "\\q" }}', "invalid syntax"),
        ("{{ 3x }}", 'bad number syntax: "3x"'),
        ("{{ 08 }}", 'integer overflow: "08"'),
        ("{{ 99999999999999999999 }}", 'integer overflow: "99999999999999999999"'),
        ("{{ .foo-bar }}", "bad character U+002D '-'"),
        ("{{ $x }}", 'undefined variable "$x"'),
        ("{{ if $x := 1 }}{{ end }}{{ $x }}", 'undefined variable "$x"'),
        ("{{ break }}", "{{break}} outside {{range}}"),
        ("{{ range 1 }}{{ continue 1 }}{{ end }}", 'unexpected "1" in {{continue}}'),
        ("{{ .foo | `x` }}", "non executable command in pipeline stage 2"),
        ("{{ }}", "missing value for command"),
        ("{{ ( }}", "unclosed left paren"),
        ("{{ ) }}", "unexpected right paren"),
        ("{{ 1.foo }}", 'bad number syntax: "1.f"'),
        ("{{ `a`.b }}", 'unexpected . after term "`a`"'),
        ("{{ /* x */ }}", 'unexpected "/" in command'),
        ("{{/* x */ }}", "comment ends before closing delimiter"),
        ("{{/* x", "unclosed comment"),
        ("{{ $a, $b := 1 }}", "too many declarations in command"),
        ("{{ range $a, $b, $c := . }}{{ end }}", "too many declarations in range"),
        ("{{ range $a, 1 }}{{ end }}", "range can only initialize variables"),
        (
            '{{ define "a" }}x{{ end }}{{ define "a" }}y{{ end }}',
            'template: multiple definition of template "a"',
        ),
        ("{{ template x }}", 'unexpected "x" in template clause'),
        ("{{ .foo\n}}{{ 'ab\n }}", "unterminated character constant"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        Template(text)
    assert re.fullmatch(r"template: line:\d+: (.*)", info.value.message, re.S)
    assert info.value.message.split(": ", 2)[2] == message


@pytest.mark.parametrize(
    ("text", "position", "context", "message"),
    [
        ("{{ nil }}", "1:3", "nil", "nil is not a command"),
        ('{{ "a" "b" }}', "1:3", '"a"', 'can\'t give argument to non-function "a"'),
        ("{{ .foo.bar }}", "1:7", ".foo.bar", "can't evaluate field bar in type string"),
        ("{{ .foo 1 }}", "1:3", ".foo", "foo is not a method but has arguments"),
        ("{{ $x = 1 }}", "1:8", "1", "undefined variable: $x"),
        ("{{ printf }}", "1:3", "printf", "wrong number of args for printf: want at least 1 got 0"),
        ("{{ .foo | now }}", "1:10", "now", "wrong number of args for now: want 0 got 1"),
        ('{{ trunc "3" .foo }}', "1:9", '"3"', 'expected integer; found "3"'),
        ("{{ trunc .n .foo }}", "1:9", ".n", "wrong type for value; expected int; got string"),
        (
            "{{ trunc (add 1 2) .foo }}",
            "1:16",
            "2",
            "wrong type for value; expected int; got int64",
        ),
        ("{{ ToUpper nil }}", "1:11", "nil", "cannot assign nil to string"),
        ("{{ fromJson `x` | ToUpper }}", "1:18", "ToUpper", "invalid value; expected string"),
        (
            '{{ unixEpoch "2020" }}',
            "1:13",
            '"2020"',
            'can\'t handle "2020" for arg of type time.Time',
        ),
        ("{{ round 1.5 `1` }}", "1:13", "`1`", "expected integer; found `1`"),
        (
            "{{ eq 1 `1` }}",
            "1:3",
            "eq 1 `1`",
            "error calling eq: incompatible types for comparison",
        ),
        (
            "{{ lt true false }}",
            "1:3",
            "lt true false",
            "error calling lt: invalid type for comparison",
        ),
        (
            "{{ eq (fromJson `[]`) (fromJson `[]`) }}",
            "1:3",
            "eq (fromJson `[]`) (fromJson `[]`)",
            "error calling eq: non-comparable type []: []interface {}",
        ),
        ("{{ len 3 }}", "1:3", "len 3", "error calling len: len of type int"),
        (
            "{{ index `abc` 3 }}",
            "1:3",
            "index `abc` 3",
            "error calling index: index out of range: 3",
        ),
        (
            "{{ index 3 0 }}",
            "1:3",
            "index 3 0",
            "error calling index: can't index item of type int",
        ),
        (
            "{{ slice `abc` 2 1 }}",
            "1:3",
            "slice `abc` 2 1",
            "error calling slice: invalid slice index: 2 > 1",
        ),
        (
            "{{ range .foo }}{{ end }}",
            "1:9",
            "{{range .foo}}{{end}}",
            "range can't iterate over blip",
        ),
        (
            "{{ range $a, $b := 3 }}{{ end }}",
            "1:9",
            "{{range $a, $b := 3}}{{end}}",
            "can't use 3 to iterate over more than one variable",
        ),
        ('{{ template "nope" }}', "1:12", '{{template "nope"}}', 'template "nope" not defined'),
        # After a parenthesized head, Go's position is the last node it evaluated.
        (
            '{{ (fromJson `{"n":null}`).n.x }}',
            "1:13",
            '`{"n":null}`',
            "nil pointer evaluating interface {}.x",
        ),
        (
            "{{ call .foo }}",
            "1:3",
            "call .foo",
            "error calling call: non-function .foo of type string",
        ),
        (
            "{{ repeat -1 `x` }}",
            "1:3",
            "repeat -1 `x`",
            "error calling repeat: strings: negative Repeat count",
        ),
        (
            "{{ substr 4 2 `hello` }}",
            "1:3",
            "substr 4 2 `hello`",
            "error calling substr: runtime error: slice bounds out of range [4:2]",
        ),
        (
            "{{ substr -1 9 `hello` }}",
            "1:3",
            "substr -1 9 `hello`",
            "error calling substr: runtime error: slice bounds out of range [:9] with length 5",
        ),
        ("{{ divf 1 0 }}", "1:3", "divf 1 0", "error calling divf: decimal division by zero"),
        (
            "{{ addf `NaN` }}",
            "1:3",
            "addf `NaN`",
            "error calling addf: Cannot create a Decimal from NaN",
        ),
        (
            "{{ urldecode `%zz` }}",
            "1:3",
            "urldecode `%zz`",
            'error calling urldecode: invalid URL escape "%zz"',
        ),
        (
            "{{ regexReplaceAll `(` .foo `x` }}",
            "1:3",
            "regexReplaceAll `(` .foo `x`",
            "error calling regexReplaceAll: error parsing regexp: missing closing ): `(`",
        ),
        (
            "{{ bytes `x` }}",
            "1:3",
            "bytes `x`",
            'error calling bytes: strconv.ParseFloat: parsing "": invalid syntax',
        ),
        (
            "{{ duration `1x` }}",
            "1:3",
            "duration `1x`",
            'error calling duration: time: unknown unit "x" in duration "1x"',
        ),
        (
            "{{ unixToTime `123` }}",
            "1:3",
            "unixToTime `123`",
            "error calling unixToTime: unable to parse time '123': %!w(<nil>)",
        ),
        (
            "{{ unixToTime `abc` }}",
            "1:3",
            "unixToTime `abc`",
            "error calling unixToTime: unable to parse time 'abc': strconv.ParseInt:"
            ' parsing "abc": invalid syntax',
        ),
        (
            "{{ __timestamp__.Format }}",
            "1:3",
            "__timestamp__",
            "wrong number of args for Format: want 1 got 0",
        ),
        (
            "{{ __timestamp__.Nope }}",
            "1:3",
            "__timestamp__",
            "can't evaluate field Nope in type time.Time",
        ),
    ],
)
def test_execution_errors(text: str, position: str, context: str, message: str) -> None:
    template = Template(text)
    with pytest.raises(TemplateError) as info:
        template.render(LABELS, "the line", TS)
    assert info.value.message == (
        f'template: line:{position}: executing "line" at <{context}>: {message}'
    )


def test_recursive_template_stops_with_an_error() -> None:
    message = failure('{{ define "a" }}{{ template "a" . }}{{ end }}{{ template "a" . }}')
    assert message.startswith('template: line:1:28: executing "a" at <{{template "a" .}}>: ')
    assert "exceeded maximum template depth" in message


def test_rendering_has_no_state_between_calls() -> None:
    template = Template("{{ $x := .foo }}{{ range 2 }}{{ $x = print $x . }}{{ end }}{{ $x }}")
    assert template.render({"foo": "a"}, "", 0) == "a01"
    assert template.render({"foo": "b"}, "", 0) == "b01"
