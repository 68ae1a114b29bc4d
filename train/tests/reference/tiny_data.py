"""Deterministic synthetic no_robots rows (ml-spec §6) for tests and the demo.

This is the reference for `train/src/tiny.rs::generate_rows`, which ports it line by line:
same splitmix64 stream, same word lists, same order of draws. `cargo test` checks that the Rust
generator reproduces `train/tests/fixtures/tiny-data/*.jsonl` exactly.

The text has learnable structure (fixed capital cities, sums, uppercase rewrites, fixed answer
formats), so a LoRA run's loss falls quickly on it.
"""

MASK = (1 << 64) - 1

CATEGORIES = [
    "Generation", "Open QA", "Brainstorm", "Chat", "Rewrite",
    "Summarize", "Coding", "Classify", "Closed QA", "Extract",
]
COUNTRIES = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"),
]
ANIMALS = ["cat", "dog", "horse", "owl", "fox", "whale", "rabbit", "otter"]
BIRDS = ["owl"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]
ADJECTIVES = ["happy", "quiet", "brave", "small", "bright", "gentle", "clever", "sleepy"]
PLACES = ["forest", "river", "city", "garden", "mountain", "beach", "café"]
NAMES = ["Ana", "Ben", "Chloé", "Dev", "Emma", "Felix"]


class SplitMix64:
    """splitmix64 (Steele, Lea, Flood 2014); the same stream as the Rust port."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        return self.next_u64() % n

    def pick(self, items):
        return items[self.below(len(items))]


def cap(word):
    """ASCII-style capitalisation of the first character (all words here start with ASCII)."""
    return word[:1].upper() + word[1:]


def messages_for(category, rng):
    """The messages of one row of `category`; draws from `rng` in a fixed order."""
    if category == "Generation":
        adj, animal, place, color = rng.pick(ADJECTIVES), rng.pick(ANIMALS), rng.pick(PLACES), rng.pick(COLORS)
        return [
            ("user", f"Write a short poem about a {adj} {animal} in the {place}."),
            ("assistant", f"The {adj} {animal} walks by the {place},\nit dreams of {color} skies.\n"
                          f"The {place} is {adj} tonight."),
        ]
    if category == "Open QA":
        country, capital = rng.pick(COUNTRIES)
        return [
            ("user", f"What is the capital of {country}?"),
            ("assistant", f"The capital of {country} is {capital}."),
        ]
    if category == "Brainstorm":
        color, animal = rng.pick(COLORS), rng.pick(ANIMALS)
        a, b, c = rng.pick(ADJECTIVES), rng.pick(ADJECTIVES), rng.pick(ADJECTIVES)
        return [
            ("user", f"Give me three names for a {color} {animal}."),
            ("assistant", f"1. {cap(a)} {cap(color)}\n2. {cap(b)} {cap(animal)}\n3. {cap(c)} the {cap(animal)}"),
        ]
    if category == "Chat":
        animal, color, place = rng.pick(ANIMALS), rng.pick(COLORS), rng.pick(PLACES)
        return [
            ("system", f"You are a friendly assistant who loves {animal}s."),
            ("user", "Hi! What is your favourite color?"),
            ("assistant", f"Hello! I like {color}, like a {color} {animal}."),
            ("user", "Why?"),
            ("assistant", f"Because {color} reminds me of the {place}."),
        ]
    if category == "Rewrite":
        adj, animal, color, place = rng.pick(ADJECTIVES), rng.pick(ANIMALS), rng.pick(COLORS), rng.pick(PLACES)
        sentence = f"the {adj} {animal} sees a {color} {place}."
        return [
            ("user", f"Rewrite this sentence in capital letters: {sentence}"),
            ("assistant", sentence.upper()),
        ]
    if category == "Summarize":
        animal, place, color, adj = rng.pick(ANIMALS), rng.pick(PLACES), rng.pick(COLORS), rng.pick(ADJECTIVES)
        return [
            ("user", f"Summarize: The {animal} went to the {place}. It found a {color} stone. "
                     f"Then it went home feeling {adj}."),
            ("assistant", f"A {adj} {animal} found a {color} stone at the {place}."),
        ]
    if category == "Coding":
        a, b = rng.below(20), rng.below(20)
        return [
            ("user", f"Write a Python function that adds {a} and {b}."),
            ("assistant", f"```python\ndef add_{a}_{b}():\n    return {a} + {b}  # = {a + b}\n```"),
        ]
    if category == "Classify":
        animal = rng.pick(ANIMALS)
        kind = "bird" if animal in BIRDS else "mammal"
        return [
            ("user", f"Is the {animal} a mammal or a bird?"),
            ("assistant", f"The {animal} is a {kind}."),
        ]
    if category == "Closed QA":
        name, a, b = rng.pick(NAMES), rng.below(10), rng.below(10)
        return [
            ("user", f"{name} has {a} apples and buys {b} more. How many apples does {name} have?"),
            ("assistant", f"{name} has {a + b} apples."),
        ]
    if category == "Extract":
        c1, animal, c2, place = rng.pick(COLORS), rng.pick(ANIMALS), rng.pick(COLORS), rng.pick(PLACES)
        return [
            ("user", f"Extract the colors from: The {c1} {animal} sat on a {c2} mat near the {place}."),
            ("assistant", f"{c1}, {c2}"),
        ]
    raise ValueError(category)


def make_row(rng):
    """One row: category, then its messages, then a 64-hex-digit prompt_id (4 draws)."""
    category = rng.pick(CATEGORIES)
    messages = messages_for(category, rng)
    prompt_id = "".join(f"{rng.next_u64():016x}" for _ in range(4))
    prompt = next(content for role, content in messages if role == "user")
    return {
        "prompt": prompt,
        "prompt_id": prompt_id,
        "messages": [{"role": role, "content": content} for role, content in messages],
        "category": category,
    }


TEST_SEED_XOR = 0xA5A5A5A5A5A5A5A5


def generate_rows(seed, n_train, n_test):
    """`(train, test)` rows: train from splitmix64(seed), test from splitmix64(seed ^ TEST_SEED_XOR)."""
    rng = SplitMix64(seed)
    train = [make_row(rng) for _ in range(n_train)]
    rng = SplitMix64(seed ^ TEST_SEED_XOR)
    test = [make_row(rng) for _ in range(n_test)]
    return train, test


def format_example(messages):
    """ml-spec §1.3 / the study's `format_no_robots`: "Role: content" joined by blank lines, stripped."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages).strip()
