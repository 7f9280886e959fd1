"""Sampling through llama.cpp's sampler chain: the per-token choice never leaves C.

`SamplingParams` holds the llama-cpp-python-style knobs; `build_sampler_chain` turns them into one
`llama_sampler_chain` in llama.cpp's usual order (logit bias, penalties, grammar, top-k, typical, top-p, min-p,
temperature, then dist), or a greedy chain for `temperature <= 0`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llamarcp import _adapt
from llamarcp._backend import capture_log, get_lib
from llamarcp._ffi import ffi
from llamarcp._managed import Managed
from llamarcp.errors import GrammarError

if TYPE_CHECKING:
    from llamarcp._core import Model

__all__ = [
    "LLAMA_DEFAULT_SEED",
    "LogitsProcessorList",
    "Sampler",
    "SamplerChain",
    "SamplingParams",
    "StoppingCriteriaList",
    "build_sampler_chain",
]

#: llama.h LLAMA_DEFAULT_SEED: "pick a random seed" (read from the generated declarations).
LLAMA_DEFAULT_SEED: int = ffi.integer_const("LLAMA_DEFAULT_SEED")


class Sampler(Managed):
    """One sampler not (yet) in a chain; `SamplerChain.add` takes it over."""

    kind = "sampler"

    def __init__(self, ptr: Any) -> None:
        self._lib = get_lib()
        super().__init__(ptr)

    def _free(self, ptr: Any) -> None:
        self._lib.llama_sampler_free(ptr)

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self.ptr, token)


class SamplerChain(Managed):
    """A `llama_sampler_chain`; it owns (and frees) every sampler added to it."""

    kind = "sampler chain"

    def __init__(self) -> None:
        lib = get_lib()
        self._lib = lib
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = True
        super().__init__(lib.llama_sampler_chain_init(params))
        self.names: list[str] = []

    def _free(self, ptr: Any) -> None:
        self._lib.llama_sampler_free(ptr)

    def add(self, sampler: Sampler, name: str) -> None:
        chain = self.ptr
        self._lib.llama_sampler_chain_add(chain, sampler.release())
        self.names.append(name)

    def sample(self, ctx: Any, idx: int = -1) -> int:
        """Sample (and accept) a token from the `idx`-th output of the last decode."""
        return int(self._lib.llama_sampler_sample(self.ptr, ctx, idx))

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self.ptr, token)

    def reset(self) -> None:
        self._lib.llama_sampler_reset(self.ptr)

    def __len__(self) -> int:
        return int(self._lib.llama_sampler_chain_n(self.ptr))


@dataclass
class SamplingParams:
    """Knobs of one completion; defaults are llama-cpp-python's `create_completion` defaults."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int = LLAMA_DEFAULT_SEED
    grammar: str | None = None
    grammar_root: str = "root"
    logit_bias: Mapping[int, float] | None = None
    mirostat_mode: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    min_keep: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self, n_vocab: int) -> None:
        """Reject values llama.cpp would misbehave on: TypeError/ValueError naming the parameter."""
        from llamarcp.validate import check_sampling_params

        check_sampling_params(self, n_vocab)

    @property
    def uses_penalties(self) -> bool:
        return self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


def build_sampler_chain(
    model: Model, params: SamplingParams, history: Sequence[int] = (), *, grammar_in_chain: bool = True
) -> SamplerChain:
    """One sampler chain for `params`; `history` (the prompt) primes the penalty sampler only.

    With `grammar_in_chain=False` the grammar is left out, for callers that check the chain's pick against a
    separate grammar sampler and only constrain the whole vocab when the pick is rejected (much faster on
    large vocabs than running the grammar over every candidate of every token).
    """
    lib = get_lib()
    params.validate(model.n_vocab)
    chain = SamplerChain()
    try:
        if params.logit_bias:
            items = [(int(t), float(b)) for t, b in params.logit_bias.items()]
            arr = ffi.new("llama_logit_bias[]", len(items))
            for i, (token, bias) in enumerate(items):
                arr[i].token = token
                arr[i].bias = bias
            chain.add(Sampler(lib.llama_sampler_init_logit_bias(model.n_vocab, len(items), arr)), "logit_bias")
        if params.uses_penalties:
            penalties = Sampler(
                _adapt.sampler_init_penalties(
                    lib,
                    model.n_vocab,
                    params.penalty_last_n,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
            # Only the penalty sampler sees the prompt: accepting it into the chain would also feed the grammar.
            for token in list(history)[-params.penalty_last_n :] if params.penalty_last_n > 0 else ():
                penalties.accept(token)
            chain.add(penalties, "penalties")
        if params.grammar is not None and grammar_in_chain:
            chain.add(grammar_sampler(model, params.grammar, params.grammar_root), "grammar")
        seed = int(params.seed)
        if params.temperature <= 0:
            chain.add(Sampler(lib.llama_sampler_init_greedy()), "greedy")
        elif params.mirostat_mode == 1:
            chain.add(Sampler(lib.llama_sampler_init_temp(params.temperature)), "temp")
            sampler = lib.llama_sampler_init_mirostat(
                model.n_vocab, seed, params.mirostat_tau, params.mirostat_eta, 100
            )
            chain.add(Sampler(sampler), "mirostat")
        elif params.mirostat_mode == 2:
            chain.add(Sampler(lib.llama_sampler_init_temp(params.temperature)), "temp")
            sampler = lib.llama_sampler_init_mirostat_v2(seed, params.mirostat_tau, params.mirostat_eta)
            chain.add(Sampler(sampler), "mirostat_v2")
        else:
            min_keep = max(1, int(params.min_keep))
            if params.top_k > 0:
                chain.add(Sampler(lib.llama_sampler_init_top_k(params.top_k)), "top_k")
            if params.typical_p < 1.0:
                chain.add(Sampler(lib.llama_sampler_init_typical(params.typical_p, min_keep)), "typical")
            if params.top_p < 1.0:
                chain.add(Sampler(lib.llama_sampler_init_top_p(params.top_p, min_keep)), "top_p")
            if params.min_p > 0.0:
                chain.add(Sampler(lib.llama_sampler_init_min_p(params.min_p, min_keep)), "min_p")
            chain.add(Sampler(lib.llama_sampler_init_temp(params.temperature)), "temp")
            chain.add(Sampler(lib.llama_sampler_init_dist(seed)), "dist")
    except BaseException:
        chain.close()
        raise
    return chain


def grammar_sampler(model: Model, grammar: Any, root: str = "root") -> Sampler:
    """A GBNF grammar sampler; a grammar that does not parse raises GrammarError with llama.cpp's reason.

    `grammar` is GBNF text or a `LlamaGrammar` (anything with str `text` and `root`: this module does not
    import llamarcp.grammar, which builds on it).
    """
    if not isinstance(grammar, str) and isinstance(getattr(grammar, "text", None), str):
        grammar, root = grammar.text, str(grammar.root)
    if not isinstance(grammar, str):
        raise TypeError(f"grammar must be GBNF text or a LlamaGrammar, not {type(grammar).__name__}")
    try:
        text = grammar.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise GrammarError(f"grammar is not valid UTF-8 text: {exc}") from exc
    if b"\x00" in text:
        raise GrammarError("grammar contains a NUL character")
    if not text.strip():
        raise GrammarError("grammar is empty")
    from llamarcp.validate import check_grammar

    check_grammar(grammar, root, model.n_vocab)  # shapes llama.cpp would crash or stall on never reach it
    lib = get_lib()
    with capture_log() as log:
        ptr = lib.llama_sampler_init_grammar(model.vocab, text, root.encode("utf-8"))
    if ptr == ffi.NULL:
        raise GrammarError(f"invalid GBNF grammar{log.reason()}")
    return Sampler(ptr)


class LogitsProcessorList(list):  # type: ignore[type-arg]
    """Callables `(input_ids, scores) -> scores` applied in order (llama-cpp-python's class of the same name)."""

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


class StoppingCriteriaList(list):  # type: ignore[type-arg]
    """Callables `(input_ids, scores) -> bool`; generation stops when any says True (llama-cpp-python's class)."""

    def __call__(self, input_ids: Any, scores: Any) -> bool:
        return any(criterion(input_ids, scores) for criterion in self)


def as_logits_processor(value: Any) -> Any:
    """None, a callable, or a plain list of callables (wrapped so it can be called)."""
    if value is None or callable(value):
        return value
    if isinstance(value, (list, tuple)):
        return LogitsProcessorList(value)
    raise TypeError("logits_processor must be a callable or a list of callables")


def as_stopping_criteria(value: Any) -> Any:
    if value is None or callable(value):
        return value
    if isinstance(value, (list, tuple)):
        return StoppingCriteriaList(value)
    raise TypeError("stopping_criteria must be a callable or a list of callables")
