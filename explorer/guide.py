"""What the page says before anyone presses a button: each method in two sentences (what it does, what to watch),
a glossary of the symbols the figures use, and example prompts chosen to show each method's payoff.

The example prompts are written for this page: none is from the books the embedded models and heads were
trained on, nor from the held-out task suite (engines/analysis/tasks), so what a visitor sees is the method on
text it has not memorised.
"""
from __future__ import annotations

from engines.methods import METHODS

# What to watch in each method's figures: the second sentence of its introduction.
WATCH = {
    "autoregressive": "Watch the distribution before and after temperature, top-k and top-p: every token costs "
                      "one target forward, the cost every other method tries to beat.",
    "speculative": "Watch each drafted token's p and q and the coin u against min(1, p/q): the accepted run "
                   "length is the speedup, and the tokens are exactly the target's.",
    "tree": "Watch which branch of the draft tree survives one target forward: a wider tree buys more accepted "
            "tokens per forward at the price of a longer forward.",
    "jacobi": "Watch the trajectory settle left to right: each iteration fixes at least one more position, and "
              "predictable text (counting, lists) settles several at once.",
    "lookahead": "Watch the n-gram pool fill from the Jacobi window's diagonals and the verification branch "
                 "accept a pooled n-gram: repetitive text pays off most.",
    "mask-predict": "Watch the unmasking order: confident positions are filled first, and fewer forwards than "
                    "tokens is the whole point (and the risk).",
}

GLOSSARY = """\
| symbol | meaning |
|---|---|
| **p** | the target model's probability of a token (after temperature, top-k and top-p) |
| **q** | the drafter's probability of the token it proposed |
| **u** | the uniform coin of an acceptance test: a drafted token is kept when u <= min(1, p/q) |
| **α** (alpha) | the acceptance rate: the expected share of drafted tokens the target keeps |
| **k** | how many tokens the drafter proposes per iteration (speculative decoding) |
| **c** | the cost of one drafter forward relative to one target forward (measured on this machine) |
| **T(n)** | the time of one target forward over n tokens, relative to one token: verifying n costs T(n) |
| **τ** (tau) | tokens committed per target forward: the speedup before costs, 1 for autoregressive decoding |
| **greedy** | temperature 0: p is one-hot on the argmax, so every method must give `generate()`'s exact text |
"""

EXAMPLES = {
    "autoregressive": ["Write a haiku about the first snow of winter.",
                       "Explain in two sentences why the sky is blue."],
    "speculative": ["Repeat this sentence three times: The red kite circles above the quiet harbour.",
                    "Write a Python function that returns the squares of the numbers from 1 to n.",
                    "List the months of the year, one per line."],
    "tree": ["List the days of the week, then list them again in reverse order.",
             "Write a short dialogue between a baker and a customer buying bread."],
    "jacobi": ["Count from 1 to 30, separated by commas.",
               "Write the English alphabet in capital letters, separated by spaces."],
    "lookahead": ["Count from 1 to 30, separated by commas.",
                  "Repeat this sentence three times: The red kite circles above the quiet harbour."],
    "mask-predict": ["The capital of France is",
                     "My favourite way to spend a rainy afternoon is"],
}


def intro(method: str) -> str:
    """The two sentences above the fold: what the method does (its summary's first sentence) and what to
    watch."""
    m = METHODS[method]
    first = m.summary.split(". ")[0].rstrip(".")
    return f"**{m.title}.** {first}. {WATCH[method]}"


def examples(method: str) -> list[list[str]]:
    return [[prompt] for prompt in EXAMPLES[method]]
