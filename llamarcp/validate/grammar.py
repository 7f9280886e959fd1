"""GBNF grammars checked in Python before `llama_sampler_init_grammar` sees them.

llama.cpp's grammar code (src/llama-grammar.cpp) trusts its input in ways a request can exploit:

- the parser recurses once per `(` group, and the left-recursion check once per rule reached through the
  leftmost symbol of an alternative, with no depth limit: 100k nested groups or a 100k-rule chain overflow the
  C stack (SIGSEGV);
- `S{m,n}` with n < m makes the expansion loop run ~2**64 times (memory until abort);
- the left-recursion check has no memo inside one search, so `r0 ::= r1 | r1`, `r1 ::= r2 | r2`, ... takes
  2**depth steps, and every leftmost path is a parallel parse stack that each sampled token is checked against:
  a grammar with 100k alternatives made every token cost seconds.

`check_grammar` parses the text the way llama.cpp does (same tokens, the same rewrite of `*`, `+`, `?` and
`{m,n}` into helper rules) and refuses it with a `GrammarError` naming the limit it exceeds. Syntax errors met
on the way are reported with their offset; llama.cpp's parser stays the authority on what else it accepts
(tests/test_validate_grammar.py checks that generated grammars accepted here are accepted there).
"""

from __future__ import annotations

from dataclasses import dataclass

from llamarcp.errors import GrammarError

__all__ = [
    "MAX_ALTERNATIVES",
    "MAX_ELEMENTS",
    "MAX_GRAMMAR_CHARS",
    "MAX_GROUP_DEPTH",
    "MAX_PARALLEL_STACKS",
    "MAX_REFERENCE_DEPTH",
    "MAX_REPETITION",
    "MAX_RULES",
    "MAX_STACK_TOKEN_CHECKS",
    "MIN_PARALLEL_STACKS",
    "GrammarStats",
    "check_grammar",
]

#: Longest grammar text accepted; grammars generated from large JSON schemas stay well under 100 KiB.
MAX_GRAMMAR_CHARS = 256 * 1024
#: Deepest nesting of `( ... )` groups (each level is one recursion of llama.cpp's parser).
MAX_GROUP_DEPTH = 64
#: Longest chain of rules reached through leftmost symbols (each link is one recursion of llama.cpp's
#: left-recursion check; 2000 frames stay far below a 1 MiB thread stack).
MAX_REFERENCE_DEPTH = 2000
#: Largest repetition count in `{m}`, `{m,}`, `{m,n}` (llama.cpp refuses m > 2000 and silently turns n > 2000
#: into "no maximum"; llamarcp refuses both, and n < m).
MAX_REPETITION = 2000
#: Most rules after the expansion of repetitions (each `{m,n}` adds n - m helper rules).
MAX_RULES = 20_000
#: Most grammar elements (characters, ranges, references) after the expansion of repetitions.
MAX_ELEMENTS = 500_000
#: Most alternatives (`|` branches) in one rule or group.
MAX_ALTERNATIVES = 1024
#: Most parse stacks one rule reference can open at once: the left-recursion check walks each of them when the
#: sampler is created, and each is checked against every candidate token.
MAX_PARALLEL_STACKS = 1024
#: Most (parse stack, candidate token) checks one sampled token may cost when the grammar rejects the chain's
#: pick and constrains the whole vocab: ~16-23 ns each measured, so ~0.4 s per token at worst. With the model's
#: vocab size known, a grammar may open at most MAX_STACK_TOKEN_CHECKS // n_vocab parallel stacks, but never
#: fewer than MIN_PARALLEL_STACKS (enum-heavy JSON schemas need them on 256k-token vocabs).
MAX_STACK_TOKEN_CHECKS = 1 << 24
MIN_PARALLEL_STACKS = 128


@dataclass(frozen=True)
class GrammarStats:
    """What `check_grammar` measured (after llama.cpp's expansion of repetitions)."""

    chars: int
    rules: int
    elements: int
    max_group_depth: int
    max_reference_depth: int
    max_parallel_stacks: int


# An alternative is a list of items: TERMINAL (a char, char class, `.` or token) or a rule id (int >= 0).
TERMINAL = -1
_Alternative = list[int]


def _is_word_char(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "-"


class _Parser:
    """Mirror of llama.cpp's recursive-descent GBNF parser that builds rule shapes instead of elements."""

    def __init__(self, text: str) -> None:
        self.src = text
        self.n = len(text)
        self.names: dict[str, int] = {}
        self.n_symbols = 0  # llama.cpp's symbol_ids.size(): named rules plus generated helper rules
        self.rules: dict[int, list[_Alternative]] = {}
        self.elements = 0
        self.depth = 0
        self.max_depth = 0

    # -- low-level scanning (the same character classes as llama.cpp) -----------------------------------------

    def fail(self, message: str, pos: int) -> GrammarError:
        snippet = self.src[pos : pos + 40].replace("\n", "\\n")
        return GrammarError(f"invalid GBNF grammar: {message} at offset {pos} ({snippet!r})")

    def char(self, pos: int) -> str:
        return self.src[pos] if pos < self.n else ""

    def space(self, pos: int, newline_ok: bool) -> int:
        src, n = self.src, self.n
        while pos < n:
            c = src[pos]
            if c == "#":
                while pos < n and src[pos] not in "\r\n":
                    pos += 1
            elif c in " \t" or (newline_ok and c in "\r\n"):
                pos += 1
            else:
                break
        return pos

    def name_end(self, pos: int) -> int:
        start = pos
        while pos < self.n and _is_word_char(self.src[pos]):
            pos += 1
        if pos == start:
            raise self.fail("expecting a rule name", start)
        return pos

    def int_end(self, pos: int) -> int:
        start = pos
        while pos < self.n and "0" <= self.src[pos] <= "9":
            pos += 1
        if pos == start:
            raise self.fail("expecting an integer", start)
        return pos

    def one_char(self, pos: int) -> int:
        """Position after one (possibly escaped) character of a literal or class."""
        if pos >= self.n:
            raise self.fail("unexpected end of input", pos)
        if self.src[pos] != "\\":
            return pos + 1
        kind = self.char(pos + 1)
        width = {"x": 2, "u": 4, "U": 8}.get(kind)
        if width is not None:
            digits = self.src[pos + 2 : pos + 2 + width]
            if len(digits) != width or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise self.fail(f"expecting {width} hex digits", pos)
            return pos + 2 + width
        if kind in ("t", "r", "n", "\\", '"', "[", "]", "-"):
            return pos + 2
        raise self.fail("unknown escape", pos)

    # -- symbols -------------------------------------------------------------------------------------------------

    def symbol(self, name: str) -> int:
        if name not in self.names:
            self.names[name] = self.n_symbols
            self.n_symbols += 1
        return self.names[name]

    def new_symbol(self) -> int:
        rule_id = self.n_symbols
        self.n_symbols += 1
        if self.n_symbols > MAX_RULES:
            raise GrammarError(f"grammar expands to more than MAX_RULES={MAX_RULES} rules")
        return rule_id

    def add_elements(self, count: int) -> None:
        self.elements += count
        if self.elements > MAX_ELEMENTS:
            raise GrammarError(f"grammar expands to more than MAX_ELEMENTS={MAX_ELEMENTS} elements")

    # -- grammar structure ---------------------------------------------------------------------------------------

    def parse(self) -> None:
        pos = self.space(0, True)
        while pos < self.n:
            pos = self.rule(pos)

    def rule(self, pos: int) -> int:
        end = self.name_end(pos)
        rule_id = self.symbol(self.src[pos:end])
        pos = self.space(end, False)
        if self.src[pos : pos + 3] != "::=":
            raise self.fail("expecting ::=", pos)
        pos = self.alternates(self.space(pos + 3, True), rule_id, nested=False)
        if self.src.startswith("\r\n", pos):
            pos += 2
        elif self.char(pos) in ("\r", "\n"):
            pos += 1
        elif pos < self.n:
            raise self.fail("expecting newline or end", pos)
        return self.space(pos, True)

    def alternates(self, pos: int, rule_id: int, nested: bool) -> int:
        alternatives: list[_Alternative] = []
        pos = self.sequence(pos, alternatives, nested)
        while self.char(pos) == "|":
            if len(alternatives) >= MAX_ALTERNATIVES:
                raise GrammarError(f"a rule or group has more than MAX_ALTERNATIVES={MAX_ALTERNATIVES} alternatives")
            pos = self.sequence(self.space(pos + 1, True), alternatives, nested)
        self.add_elements(len(alternatives))  # one ALT/END marker per alternative
        self.rules[rule_id] = alternatives
        return pos

    def sequence(self, pos: int, alternatives: list[_Alternative], nested: bool) -> int:
        items: _Alternative = []
        alternatives.append(items)
        last_start = 0  # index in items where the last symbol began (a literal spans several items)
        prev_rules = 1  # llama.cpp's n_prev_rules: how many rules the last symbol stands for
        src = self.src
        while pos < self.n:
            c = src[pos]
            if c == '"':
                pos += 1
                last_start, prev_rules = len(items), 1
                while self.char(pos) != '"':
                    pos = self.one_char(pos)
                    items.append(TERMINAL)
                self.add_elements(len(items) - last_start)
                pos = self.space(pos + 1, nested)
            elif c == "[":
                pos += 1
                if self.char(pos) == "^":
                    pos += 1
                last_start, prev_rules = len(items), 1
                count = 0
                while self.char(pos) != "]":
                    pos = self.one_char(pos)
                    count += 1
                    if self.char(pos) == "-" and self.char(pos + 1) != "]":
                        pos = self.one_char(pos + 1)
                        count += 1
                items.append(TERMINAL)  # a class is one position however many ranges it lists
                self.add_elements(max(1, count))
                pos = self.space(pos + 1, nested)
            elif c in "<!":
                if c == "!":
                    pos += 1
                if self.char(pos) != "<":
                    raise self.fail("expecting '<'", pos)
                close = src.find(">", pos)
                if close < 0:
                    raise self.fail("expecting '>'", pos)
                last_start, prev_rules = len(items), 1
                items.append(TERMINAL)
                self.add_elements(1)
                pos = self.space(close + 1, nested)
            elif _is_word_char(c):
                end = self.name_end(pos)
                last_start, prev_rules = len(items), 1
                items.append(self.symbol(src[pos:end]))
                self.add_elements(1)
                pos = self.space(end, nested)
            elif c == "(":
                self.depth += 1
                self.max_depth = max(self.max_depth, self.depth)
                if self.depth > MAX_GROUP_DEPTH:
                    raise GrammarError(f"grammar nests ( ) groups deeper than MAX_GROUP_DEPTH={MAX_GROUP_DEPTH}")
                before = self.n_symbols
                sub_id = self.new_symbol()
                pos = self.alternates(self.space(pos + 1, True), sub_id, nested=True)
                self.depth -= 1
                prev_rules = max(1, self.n_symbols - before)
                last_start = len(items)
                items.append(sub_id)
                self.add_elements(1)
                if self.char(pos) != ")":
                    raise self.fail("expecting ')'", pos)
                pos = self.space(pos + 1, nested)
            elif c == ".":
                last_start, prev_rules = len(items), 1
                items.append(TERMINAL)
                self.add_elements(1)
                pos = self.space(pos + 1, nested)
            elif c in "*+?{":
                low, high, pos = self.repetition_bounds(pos, nested)
                if last_start == len(items):
                    raise self.fail("expecting an item before a repetition", pos)
                prev_rules = self.repeat(items, last_start, low, high, prev_rules)
            else:
                break
        return pos

    def repetition_bounds(self, pos: int, nested: bool) -> tuple[int, int | None, int]:
        """(min, max or None for unbounded, position after) of `*`, `+`, `?` or `{m}`, `{m,}`, `{m,n}`."""
        c = self.src[pos]
        if c != "{":
            shorthand: tuple[int, int | None] = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
            return shorthand[0], shorthand[1], self.space(pos + 1, nested)
        start = pos
        pos = self.space(pos + 1, nested)
        end = self.int_end(pos)
        low = self._count(self.src[pos:end], start)
        high: int | None = low
        pos = self.space(end, nested)
        if self.char(pos) == ",":
            pos = self.space(pos + 1, nested)
            high = None
            if "0" <= self.char(pos) <= "9":
                end = self.int_end(pos)
                high = self._count(self.src[pos:end], start)
                pos = self.space(end, nested)
        if self.char(pos) != "}":
            raise self.fail("expecting '}'", pos)
        if high is not None and high < low:
            raise GrammarError(
                f"invalid GBNF grammar: repetition {self.src[start : pos + 1]!r} has a maximum below its minimum"
            )
        return low, high, self.space(pos + 1, nested)

    def _count(self, digits: str, where: int) -> int:
        if len(digits) > 6 or int(digits) > MAX_REPETITION:
            raise GrammarError(
                f"repetition count {digits[:20]} at offset {where} exceeds MAX_REPETITION={MAX_REPETITION}"
            )
        return int(digits)

    def repeat(self, items: _Alternative, start: int, low: int, high: int | None, prev_rules: int) -> int:
        """llama.cpp's rewrite: S{m,n} -> S (m times) then a chain of n-m optional helper rules."""
        total = high if high else (low if low > 0 else 1)
        if prev_rules * total > MAX_REPETITION:
            raise GrammarError(
                f"repeating a group of {prev_rules} rules {total} times exceeds MAX_REPETITION={MAX_REPETITION}"
            )
        symbol = items[start:]
        self.add_elements(len(symbol) * max(0, low - 1))
        del items[start:]
        items.extend(symbol * low)
        optional = 1 if high is None else high - low
        last_helper = -1
        for i in range(optional):
            helper = self.new_symbol()
            self.add_elements(len(symbol) + 3)
            rest = [helper] if high is None else ([last_helper] if i > 0 else [])
            self.rules[helper] = [symbol + rest, []]
            last_helper = helper
        if optional > 0:
            items.append(last_helper)
            self.add_elements(1)
        return prev_rules * total


def _leftmost_refs(alternatives: list[_Alternative], may_be_empty: list[bool]) -> list[int]:
    """Every rule llama.cpp's left-recursion check descends into from this rule, in its order."""
    refs = []
    for items in alternatives:
        for item in items:
            if item == TERMINAL:
                break
            refs.append(item)
            if not may_be_empty[item]:
                break
    return refs


def _measure(rules: list[list[_Alternative]], max_stacks: int) -> tuple[int, int]:
    """(deepest leftmost reference chain, most parse stacks a rule opens), refusing left recursion.

    Iterative post-order DFS over the leftmost-reference graph; `stacks` counts leftmost paths to terminals
    (saturating), which is both the number of parallel stacks llama.cpp advances and the number of steps its
    unmemoized left-recursion check takes.
    """
    n = len(rules)
    # llama.cpp's notion of "may be empty": the rule has a literally empty alternative.
    may_be_empty = [any(not items for items in alts) for alts in rules]
    depth = [0] * n
    stacks = [0] * n
    state = [0] * n  # 0 new, 1 in progress, 2 done
    cap = max_stacks + 1
    deepest = 0
    for first in range(n):
        if state[first]:
            continue
        todo: list[tuple[int, int, list[int]]] = [(first, 0, _leftmost_refs(rules[first], may_be_empty))]
        state[first] = 1
        while todo:
            rule, index, refs = todo[-1]
            if index < len(refs):
                todo[-1] = (rule, index + 1, refs)
                child = refs[index]
                if state[child] == 1:
                    raise GrammarError(f"invalid GBNF grammar: left recursion through rule #{child}")
                if state[child] == 0:
                    state[child] = 1
                    todo.append((child, 0, _leftmost_refs(rules[child], may_be_empty)))
                    if len(todo) > MAX_REFERENCE_DEPTH:
                        raise GrammarError(
                            f"grammar chains more than MAX_REFERENCE_DEPTH={MAX_REFERENCE_DEPTH} rules through "
                            "leftmost references"
                        )
                continue
            todo.pop()
            state[rule] = 2
            count = 0
            chain = 0
            for items in rules[rule]:
                for item in items:
                    if item == TERMINAL:
                        count += 1
                        break
                    count += stacks[item]
                    chain = max(chain, depth[item])
                    if not may_be_empty[item]:
                        break
                else:
                    count += 1  # the alternative can end here: the caller's continuation is a stack too
            stacks[rule] = min(count, cap)
            depth[rule] = chain + 1
            deepest = max(deepest, depth[rule])
            if depth[rule] > MAX_REFERENCE_DEPTH:
                raise GrammarError(
                    f"grammar chains more than MAX_REFERENCE_DEPTH={MAX_REFERENCE_DEPTH} rules through leftmost "
                    "references"
                )
            if stacks[rule] > max_stacks:
                raise GrammarError(
                    f"a rule of this grammar opens more than {max_stacks} parallel parse stacks (too many "
                    "alternatives reachable at once; every token would be checked against each; limits: "
                    f"MAX_PARALLEL_STACKS={MAX_PARALLEL_STACKS}, MAX_STACK_TOKEN_CHECKS={MAX_STACK_TOKEN_CHECKS} "
                    "divided by the vocab size)"
                )
    return deepest, max(stacks, default=0)


def check_grammar(text: str, root: str = "root", n_vocab: int | None = None) -> GrammarStats:
    """Refuse a GBNF grammar whose shape would crash, hang or slow llama.cpp; returns what was measured.

    `n_vocab` (the model's vocab size, when known) tightens the parallel-stack limit so that one token costs at
    most MAX_STACK_TOKEN_CHECKS checks. Raises GrammarError naming the limit (the MAX_* constants of this
    module) that the grammar exceeds.
    """
    if not isinstance(text, str):
        raise TypeError(f"grammar must be str, not {type(text).__name__}")
    if not isinstance(root, str) or not root:
        raise GrammarError("grammar root must be a non-empty rule name")
    if len(text) > MAX_GRAMMAR_CHARS:
        raise GrammarError(f"grammar is {len(text)} characters; the limit is MAX_GRAMMAR_CHARS={MAX_GRAMMAR_CHARS}")
    if "\x00" in text:
        raise GrammarError("grammar contains a NUL character")
    parser = _Parser(text)
    parser.parse()
    if not parser.rules:
        raise GrammarError("grammar is empty (no rules)")
    if root not in parser.names:
        raise GrammarError(f"grammar does not define its root rule {root!r}")
    rules: list[list[_Alternative]] = []
    for rule_id in range(parser.n_symbols):
        if rule_id not in parser.rules:
            name = next((k for k, v in parser.names.items() if v == rule_id), f"#{rule_id}")
            raise GrammarError(f"invalid GBNF grammar: rule {name!r} is used but never defined")
        rules.append(parser.rules[rule_id])
    max_stacks = MAX_PARALLEL_STACKS
    if n_vocab is not None and n_vocab > 0:
        max_stacks = max(MIN_PARALLEL_STACKS, min(max_stacks, MAX_STACK_TOKEN_CHECKS // n_vocab))
    depth, stacks = _measure(rules, max_stacks)
    return GrammarStats(
        chars=len(text),
        rules=len(rules),
        elements=parser.elements,
        max_group_depth=parser.max_depth,
        max_reference_depth=depth,
        max_parallel_stacks=stacks,
    )
