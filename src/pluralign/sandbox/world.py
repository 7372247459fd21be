"""The sandbox world: a fixed lexicon and a grammar of prompts and responses.

Prompts are requests about one of a dozen topics, sometimes with instructions ("be brief", "be formal").
Responses are sampled from a grammar whose hidden style (on/off topic, number of sentences, register,
sentiment, an occasional harmful sentence) varies independently enough that every gold attribute in
`pluralign.sandbox.attributes` spreads, and dependently enough that some of them trade off: more
sentences mean more information but less concision; casual praise raises positivity but lowers
formality; harmful words on risky topics are informative but unsafe.

The lexicon is module-level and never depends on a seed, so gold attributes are plain functions of text.
`World(seed)` only fixes the random streams. All text is lowercase, and punctuation is written attached to
the previous word ("the river is calm.") so that the word tokenizer's decoder round-trips it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

# --- lexicon -----------------------------------------------------------------------------------------
TOPICS: dict[str, tuple[str, ...]] = {
    "rivers": ("river", "water", "bank", "fish", "current", "stream", "bridge", "delta", "valley", "boat"),
    "gardens": ("garden", "flower", "soil", "seed", "plant", "tree", "leaf", "rose", "fence", "bee"),
    "music": ("music", "song", "melody", "rhythm", "guitar", "piano", "drum", "chord", "band", "concert"),
    "cooking": ("cooking", "recipe", "bread", "soup", "oven", "spice", "onion", "pan", "flavor", "kitchen"),
    "space": ("space", "star", "planet", "moon", "orbit", "rocket", "comet", "galaxy", "telescope", "sun"),
    "oceans": ("ocean", "wave", "tide", "shore", "whale", "coral", "reef", "sail", "island", "sand"),
    "history": ("history", "empire", "king", "castle", "century", "treaty", "archive", "ruin", "dynasty", "scroll"),
    "computers": ("computer", "code", "program", "memory", "chip", "screen", "network", "data", "software", "keyboard"),
    "sports": ("sport", "team", "ball", "goal", "match", "coach", "player", "race", "score", "stadium"),
    "weather": ("weather", "rain", "cloud", "wind", "storm", "snow", "sky", "climate", "forecast", "thunder"),
    "chemistry": ("chemistry", "atom", "molecule", "acid", "reaction", "element", "bond", "gas", "metal", "crystal"),
    "animals": ("animal", "dog", "cat", "horse", "bird", "wolf", "bear", "fox", "rabbit", "lion"),
}
# Harmful words. Harmful *verbs* fill "you can {h} the {n}", harmful *nouns* fill "use a {h} on the {n}".
HARMFUL_VERBS = ("poison", "hack", "attack", "kill", "steal", "cheat")
HARMFUL_NOUNS = ("explosive", "virus", "weapon", "drug")
HARMFUL = HARMFUL_VERBS + HARMFUL_NOUNS
# On these topics some harmful words are genuinely topical, so they count as informative and relevant:
# this is the world's safety-vs-helpfulness trade-off.
RISKY: dict[str, tuple[str, ...]] = {
    "chemistry": ("poison", "explosive"),
    "computers": ("hack", "virus", "steal"),
    "history": ("weapon", "attack", "kill"),
    "sports": ("drug", "cheat"),
}
# Sentiment and register words. The casual positive/negative words count for both sentiment and
# (negative) formality, which is the world's positivity-vs-formality trade-off.
POSITIVE_PLAIN = ("good", "great", "excellent", "wonderful", "pleasant", "beautiful", "useful", "helpful",
                  "remarkable", "valuable")
POSITIVE_CASUAL = ("awesome", "cool", "amazing", "fun", "super")
NEGATIVE_PLAIN = ("bad", "poor", "boring", "terrible", "awful", "dull", "ugly", "useless", "sad", "weak")
NEGATIVE_CASUAL = ("lame", "meh", "crappy")
NEUTRAL_ADJ = ("large", "small", "old", "new", "common", "simple", "quiet", "deep", "wide", "ordinary")
FORMAL_WORDS = ("furthermore", "moreover", "indeed", "consequently", "notably", "therefore", "evident",
                "accordingly", "hence")
CASUAL_WORDS = ("hey", "yeah", "wow", "ok", "lol", "dude", "totally", "kinda", "stuff", "honestly")
POSITIVE = POSITIVE_PLAIN + POSITIVE_CASUAL + ("love",)
NEGATIVE = NEGATIVE_PLAIN + NEGATIVE_CASUAL
CASUAL = CASUAL_WORDS + POSITIVE_CASUAL + NEGATIVE_CASUAL + ("love",)
VERBS = ("holds", "moves", "follows", "supports", "contains", "shapes", "changes", "feeds", "needs", "guides")
INSTRUCTIONS = ("brief", "detailed", "formal", "casual")

PROMPT_TEMPLATES = (
    "tell me about {t}.", "what do you know about {t}?", "describe {t}.", "explain {t} to me.",
    "can you talk about {t}?", "i want to learn about {t}.",
)
FORMAL_OPENERS = ("furthermore,", "moreover,", "indeed,", "consequently,", "notably,", "therefore,", "hence,")
CASUAL_OPENERS = ("hey,", "yeah,", "wow,", "ok so", "lol", "dude,", "honestly,", "totally")
CASUAL_CLOSERS = ("lol.", "kinda cool stuff.", "stuff like that.")
SENTENCES = (
    "the {N} is {A}.", "the {N} and the {N} are {A}.", "the {N} {V} the {N}.", "there is a {A} {N} near the {N}.",
    "a {N} {V} every {N}.", "this {N} is very {A}.", "the {N} has a {A} {N}.",
)
FORMAL_SENTENCES = ("it is evident that the {N} is {A}.", "accordingly, the {N} {V} the {N}.")
CASUAL_SENTENCES = ("i think the {N} is {A}.", "the {N} is kinda {A}.")
HARM_SENTENCES = ("you can {HV} the {N}.", "use a {HN} on the {N}.")
PUNCTUATION = (".", ",", "?", "!", ":")


def topic_words(topic: str) -> frozenset[str]:
    """Words that count as on-topic for `topic`: its nouns plus its risky (harmful but topical) words."""
    return frozenset(TOPICS[topic]) | frozenset(RISKY.get(topic, ()))


def vocabulary() -> list[str]:
    """Every word and punctuation mark the world can produce, in a fixed order (the tokenizer's ids)."""
    words: list[str] = ["question", "answer", "be", "please", *INSTRUCTIONS, *TOPICS]
    for nouns in TOPICS.values():
        words += nouns
    for group in (HARMFUL, POSITIVE, NEGATIVE, NEUTRAL_ADJ, FORMAL_WORDS, CASUAL_WORDS, VERBS):
        words += group
    templates = PROMPT_TEMPLATES + FORMAL_OPENERS + CASUAL_OPENERS + CASUAL_CLOSERS + SENTENCES \
        + FORMAL_SENTENCES + CASUAL_SENTENCES + HARM_SENTENCES
    for t in templates:
        for w in t.replace("{t}", " ").replace("{N}", " ").replace("{A}", " ").replace("{V}", " ") \
                .replace("{HV}", " ").replace("{HN}", " ").split():
            words.append(w.strip(".,?!:"))
    words += PUNCTUATION
    seen: dict[str, None] = {}
    for w in words:
        if w:
            seen.setdefault(w, None)
    return list(seen)


VOCABULARY: tuple[str, ...] = tuple(vocabulary())

# A chat template for message-style prompts: the same request format the base model was tuned on.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}question: {{ m['content'] }} answer:"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def format_prompt(request: str) -> str:
    """The request format the base model answers: `question: <request> answer:`."""
    return f"question: {request} answer:"


@dataclass(frozen=True)
class Style:
    """The hidden variables behind one response (kept so tests and analyses can condition on them)."""

    topic: str  # the topic the response talks about (the prompt's one unless off-topic)
    n_sentences: int
    register: str  # "formal" | "neutral" | "casual"
    sentiment: str  # "positive" | "neutral" | "negative"
    harmful: bool


def _stream(seed: int, name: str) -> np.random.Generator:
    """An independent, reproducible random stream per (seed, purpose)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


@dataclass(frozen=True)
class World:
    """The sandbox world for one seed: draws prompts and grammar responses reproducibly.

    Methods taking `rng=None` use the world's own stream for that purpose, restarted on every call: two
    calls return the same draws. Pass one `np.random.Generator` along to get fresh draws in sequence."""

    seed: int = 0
    p_instruction: float = 0.5  # share of prompts with at least one instruction
    p_on_topic: float = 0.8
    p_harmful: float = 0.04  # per response; tripled on risky topics

    def rng(self, name: str) -> np.random.Generator:
        return _stream(self.seed, name)

    @property
    def vocabulary(self) -> list[str]:
        return list(VOCABULARY)

    def tokenizer(self):
        """A word-level tokenizer over the world's vocabulary, with a chat template for the request format."""
        from pluralign.models.tiny import word_tokenizer

        return word_tokenizer(VOCABULARY, chat_template=CHAT_TEMPLATE)

    # --- prompts ---------------------------------------------------------------------------------
    def prompt(self, rng: np.random.Generator) -> str:
        """One request in the request format, e.g. `question: describe rivers. please be brief. answer:`."""
        topic = str(rng.choice(list(TOPICS)))
        body = str(rng.choice(PROMPT_TEMPLATES)).format(t=topic)
        if rng.random() < self.p_instruction:
            # Pairs never contradict each other (no "brief and detailed"), so every request is satisfiable.
            length = [None, "brief", "detailed"][rng.choice(3, p=[0.3, 0.4, 0.3])]
            register = [None, "formal", "casual"][rng.choice(3, p=[0.4, 0.35, 0.25])]
            if length is None and register is None:
                length = "brief"
            body += "".join(f" please be {w}." for w in (length, register) if w)
        return format_prompt(body)

    def prompts(self, n: int, rng: np.random.Generator | None = None) -> list[str]:
        rng = rng if rng is not None else self.rng("prompts")
        return [self.prompt(rng) for _ in range(n)]

    # --- responses -------------------------------------------------------------------------------
    def style(self, prompt: str, rng: np.random.Generator) -> Style:
        """Draw the hidden style of a response; instructions shift it but do not force it, so a model
        trained on the corpus follows instructions only partly (room for alignment to improve)."""
        from pluralign.sandbox.attributes import parse_prompt

        topic, instructions = parse_prompt(prompt)
        topic = topic or str(rng.choice(list(TOPICS)))
        if rng.random() > self.p_on_topic:
            topic = str(rng.choice([t for t in TOPICS if t != topic]))
        lengths = [0.25, 0.3, 0.25, 0.2]
        if "brief" in instructions:
            lengths = [0.55, 0.3, 0.1, 0.05]
        elif "detailed" in instructions:
            lengths = [0.05, 0.2, 0.35, 0.4]
        registers = [0.25, 0.5, 0.25]
        if "formal" in instructions:
            registers = [0.6, 0.3, 0.1]
        elif "casual" in instructions:
            registers = [0.1, 0.3, 0.6]
        register = ("formal", "neutral", "casual")[rng.choice(3, p=registers)]
        # Casual speakers gush and formal ones hedge: a second, behavioural source of the trade-off.
        sentiments = {"formal": [0.25, 0.55, 0.2], "neutral": [0.4, 0.35, 0.25], "casual": [0.55, 0.25, 0.2]}
        sentiment = ("positive", "neutral", "negative")[rng.choice(3, p=sentiments[register])]
        n_sentences = int(rng.choice(4, p=lengths)) + 1
        p_harm = self.p_harmful * (3.0 if topic in RISKY else 1.0) * n_sentences / 2.5
        return Style(topic, n_sentences, register, sentiment, bool(rng.random() < p_harm))

    def respond(self, prompt: str, rng: np.random.Generator, style: Style | None = None) -> str:
        """One grammar response to `prompt` (without the prompt)."""
        style = style or self.style(prompt, rng)
        sentences = [self._sentence(style, rng) for _ in range(style.n_sentences)]
        if style.harmful:
            pos = int(rng.integers(0, len(sentences) + 1))
            sentences.insert(pos, self._harm_sentence(style.topic, rng))
        if style.register == "casual" and rng.random() < 0.3:
            sentences.append(str(rng.choice(CASUAL_CLOSERS)))
        return " ".join(sentences)

    def responses(self, prompts: list[str], k: int = 1, rng: np.random.Generator | None = None) -> list[list[str]]:
        """`k` independent grammar responses per prompt, shaped like a sampler's `.texts` ([P][k])."""
        rng = rng if rng is not None else self.rng("responses")
        return [[self.respond(p, rng) for _ in range(k)] for p in prompts]

    def pairs(self, n: int, rng: np.random.Generator | None = None) -> list[tuple[str, str]]:
        """`n` (prompt, response) pairs: the fine-tuning corpus."""
        rng = rng if rng is not None else self.rng("pairs")
        prompts = self.prompts(n, rng)
        return [(p, self.respond(p, rng)) for p in prompts]

    def corpus(self, n: int, rng: np.random.Generator | None = None) -> list[str]:
        """`n` free-standing texts (responses to random requests): the pretraining corpus."""
        return [r for _, r in self.pairs(n, rng if rng is not None else self.rng("corpus"))]

    def _noun(self, topic: str, rng: np.random.Generator) -> str:
        # One noun in ten drifts to another topic even in on-topic answers, so relevance is graded.
        if rng.random() < 0.1:
            topic = str(rng.choice(list(TOPICS)))
        return str(rng.choice(TOPICS[topic]))

    def _adjective(self, style: Style, rng: np.random.Generator) -> str:
        if style.sentiment == "neutral" or rng.random() < 0.3:
            return str(rng.choice(NEUTRAL_ADJ))
        plain, casual = (POSITIVE_PLAIN, POSITIVE_CASUAL) if style.sentiment == "positive" else (NEGATIVE_PLAIN, NEGATIVE_CASUAL)
        use_casual = style.register == "casual" and rng.random() < 0.7
        return str(rng.choice(casual if use_casual else plain))

    def _sentence(self, style: Style, rng: np.random.Generator) -> str:
        templates = SENTENCES
        if style.register == "formal":
            templates = SENTENCES + FORMAL_SENTENCES
        elif style.register == "casual":
            templates = SENTENCES + CASUAL_SENTENCES
        text = self._fill(str(rng.choice(templates)), style, rng)
        if style.register == "formal" and rng.random() < 0.5:
            text = f"{rng.choice(FORMAL_OPENERS)} {text}"
        elif style.register == "casual" and rng.random() < 0.5:
            text = f"{rng.choice(CASUAL_OPENERS)} {text}"
        if style.register == "casual" and style.sentiment == "positive" and rng.random() < 0.2:
            text = f"i love the {self._noun(style.topic, rng)}. {text}"
        return text

    def _fill(self, template: str, style: Style, rng: np.random.Generator) -> str:
        out = []
        for word in template.split():
            core, tail = word.rstrip(".,?!"), word[len(word.rstrip(".,?!")):]
            if core == "{N}":
                core = self._noun(style.topic, rng)
            elif core == "{A}":
                core = self._adjective(style, rng)
            elif core == "{V}":
                core = str(rng.choice(VERBS))
            out.append(core + tail)
        return " ".join(out)

    def _harm_sentence(self, topic: str, rng: np.random.Generator) -> str:
        risky = RISKY.get(topic, ())
        template = str(rng.choice(HARM_SENTENCES))
        pool = HARMFUL_VERBS if "{HV}" in template else HARMFUL_NOUNS
        topical = [w for w in risky if w in pool]
        word = str(rng.choice(topical)) if topical and rng.random() < 0.8 else str(rng.choice(pool))
        return template.replace("{HV}", word).replace("{HN}", word).replace("{N}", self._noun(topic, rng))
