"""The instructions the target answers to make the chat data its drafters (and adapters) train on.

Written for this project: task templates crossed with topics, word problems with seeded numbers, translation
and rewriting of sentences composed here, and summaries and questions over passages of the shipped public-domain
corpus (assets/corpus). Nothing is taken from an instruction data set, so the data carries this project's
license (Apache-2.0) and no instruction can be a prompt of the held-out task suite (tests/test_tasks.py checks
the suite against every instruction and the corpus; the data's own manifest records the check on the answers).

`instructions(seed)` is deterministic: the same seed gives the same list in the same order, so generation can
stop anywhere and resume by index.
"""
from __future__ import annotations

import random
import re

from engines.models import presets

CORPUS_DIR = presets.ASSETS / "corpus"

TOPICS = """
volcanoes, honeybees, the water cycle, black holes, the printing press, bread baking, composting, the immune system,
solar panels, electric cars, the Great Wall of China, coral reefs, migrating birds, the moon landing, chess openings,
public libraries, recycling plastic, rainforests, earthquakes, the human heart, tea ceremonies, jazz music, origami,
wind turbines, the Silk Road, penguins, glaciers, sleep and memory, vaccines, the stock market, credit cards,
saving for retirement, learning to swim, marathon training, yoga for beginners, house plants, keeping chickens,
beekeeping, sourdough starters, pasta from scratch, camping in the rain, lighthouses, trains in Japan,
the Roman aqueducts, ancient Egypt, the Vikings, the Renaissance, the Industrial Revolution, the telephone,
the bicycle, typewriters, vinyl records, photography, watercolour painting, knitting, woodworking, pottery,
learning the guitar, writing a novel, public speaking, job interviews, remote work, time management,
budgeting, renting a first apartment, moving to a new city, making friends as an adult, raising a puppy,
caring for a cat, goldfish, octopuses, dolphins, elephants, owls, spiders, ants, butterflies, mushrooms,
tomatoes, potatoes, coffee, chocolate, cheese making, olive oil, rice farming, fishing boats, sailing,
hot air balloons, submarines, airplanes, rockets, satellites, the internet, email, passwords, online privacy,
spreadsheets, databases, open source software, video games, board games, football, basketball, tennis,
the Olympic Games, mountain climbing, deserts, the Arctic, the Amazon river, islands, caves, rivers, tides,
rainbows, thunderstorms, snowflakes, the seasons, climate change, air pollution, clean water, electricity,
magnets, batteries, gravity, light, sound, atoms, DNA, bacteria, fungi, dinosaurs, fossils, the solar system,
Mars, Jupiter, comets, telescopes, microscopes, maps, compasses, clocks, calendars, money, banks, markets,
taxes, elections, newspapers, museums, zoos, parks, gardens, bridges, skyscrapers, roads, traffic, bicycles in cities,
public transport, schools, homework, exams, reading habits, handwriting, languages, sign language, emojis,
kindness, gratitude, patience, courage, curiosity, friendship, family dinners, birthdays, weddings, holidays,
winter clothing, shoes, sewing, laundry, cleaning a kitchen, fixing a leaky tap, painting a room, moving house,
first aid, healthy breakfasts, drinking water, stretching, walking, running shoes, cycling, swimming pools,
sunscreen, headaches, colds, allergies, dentists, eyesight, hearing, posture, stress, meditation, journaling,
gardening in small spaces, growing herbs, bird feeders, hedgehogs, squirrels, foxes, wolves, bears, whales,
sharks, turtles, frogs, snakes, lizards, parrots, crows, eagles, horses, cows, sheep, goats, pigs, donkeys,
pizza, soup, salads, sandwiches, pancakes, curry, dumplings, tacos, sushi, ice cream, apples, bananas, oranges,
lemons, strawberries, grapes, honey, salt, sugar, spices, kitchen knives, cast iron pans, ovens, refrigerators,
washing machines, vacuum cleaners, smartphones, laptops, headphones, cameras, printers, robots, drones,
3D printing, artificial intelligence, programming, algorithms, sorting, encryption, cloud computing, smart homes
"""

SUBJECTS = [t.strip() for t in TOPICS.replace("\n", " ").split(",") if t.strip()]

GENERAL = [
    "Explain {t} in simple terms.", "What should a beginner know about {t}?", "Give me three facts about {t}.",
    "Why is {t} important?", "Write a short paragraph about {t}.", "List five things related to {t}.",
    "Describe {t} to someone who has never heard of it.", "What are common mistakes people make with {t}?",
    "Tell me something surprising about {t}.", "How would you teach a child about {t}?",
    "Write a haiku about {t}.", "Write a four-line poem about {t}.", "Write a very short story involving {t}.",
    "What are the pros and cons of {t}?", "Give me a fun fact about {t} and explain it.",
    "Summarize the history of {t} in a few sentences.", "What questions could I ask an expert on {t}?",
    "Write a tweet about {t}.", "Suggest a name for a blog about {t} and explain your choice.",
    "How has {t} changed over the last hundred years?", "Explain {t} using an analogy.",
    "What is the most interesting thing about {t}?", "Write a riddle whose answer is {t}.",
    "Give me a step-by-step guide to getting started with {t}.", "What do people often misunderstand about {t}?",
    "Write a short dialogue between two friends talking about {t}.", "Describe a day in the life of someone who works with {t}.",
    "Make a short quiz with three questions about {t}.", "Write a product review of a book about {t}.",
    "Explain how {t} affects everyday life.",
]

PAIRS = [
    "Compare {a} and {b}.", "What do {a} and {b} have in common?", "Which is more interesting, {a} or {b}? Explain.",
    "Write a short story that connects {a} and {b}.", "How are {a} and {b} different?",
]

CODE_TASKS = [
    "reverses a string", "checks whether a number is prime", "counts the vowels in a sentence",
    "finds the largest number in a list", "removes duplicates from a list", "computes the factorial of n",
    "returns the n-th Fibonacci number", "checks whether a word is a palindrome", "sorts a list of names",
    "converts Celsius to Fahrenheit", "counts how often each word appears in a text", "merges two sorted lists",
    "flattens a nested list", "computes the average of a list of numbers", "finds the second smallest number",
    "capitalizes the first letter of every word", "checks whether two words are anagrams",
    "returns the sum of the digits of a number", "reads a file and prints its number of lines",
    "generates a random password", "converts a decimal number to binary", "finds the common elements of two lists",
    "validates an email address with a simple rule", "computes the greatest common divisor of two numbers",
    "rotates a list by k positions", "checks whether brackets in a string are balanced",
    "returns the longest word in a sentence", "counts the lines in a string that start with '#'",
    "implements a simple stack class", "implements binary search on a sorted list",
]
LANGUAGES = ["Python", "JavaScript", "Python", "C", "Go", "Rust", "Java", "Python"]
CODE_TEMPLATES = [
    "Write a {lang} function that {task}.", "Show me how to write a {lang} program that {task}.",
    "In {lang}, how do I write code that {task}? Explain briefly.",
]
CODE_QUESTIONS = [
    "What is the difference between a list and a dictionary in Python?", "What does a for loop do?",
    "Explain recursion with a small example.", "What is a variable in programming?",
    "What is the difference between == and = in most programming languages?", "What is a hash table?",
    "Explain what an API is.", "What does git commit do?", "How do I read a CSV file in Python?",
    "Write a SQL query that selects all rows from a table called orders where the total is above 100.",
    "Write a SQL query that counts customers per city.", "What is an index in a database?",
    "Explain what HTTP status code 404 means.", "What is the difference between a process and a thread?",
    "What is object-oriented programming?", "Explain Big O notation with an example.",
]

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kemi", "Leo", "Mira", "Noor",
         "Omar", "Pia", "Quinn", "Rosa", "Sami", "Tess", "Uma", "Vik", "Wen", "Yara", "Zoe"]
THINGS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "coins"]
MATH = [
    "{n} has {a} {x}. {m} gives {n} {b} more. How many {x} does {n} have now?",
    "{n} buys {a} {x} at {c} dollars each. How much does {n} spend?",
    "A box holds {c} {x}. How many boxes are needed for {a} {x}?",
    "{n} reads {b} pages a day. How many days does a {a}-page book take?",
    "A train travels {a} km in {c} hours. What is its average speed?",
    "{n} had {a} {x} and gave away {b}. Then {n} bought {c} more. How many are left?",
    "What is {a} times {c}? Show your work.", "What is {a} plus {b} minus {c}?",
    "A rectangle is {b} cm wide and {c} cm long. What is its area and perimeter?",
    "{n} saves {c} dollars a week. How many weeks until {n} has {a} dollars?",
    "If {b} workers build a wall in {c} days, how long would {a} workers take at the same rate?",
    "What is {c} percent of {a}?", "Solve for x: {c}x + {b} = {a}.",
    "{n} and {m} share {a} {x} so that {n} gets {c} more than {m}. How many does each get?",
]

SENTENCE_PARTS = (
    ["The cat", "My brother", "Our teacher", "The old man", "A small bird", "The doctor", "My neighbour", "The children"],
    ["likes to", "wants to", "decided to", "forgot to", "is going to", "tried to", "loves to", "needs to"],
    ["read in the garden", "cook dinner tonight", "visit the museum", "walk to the station", "buy fresh bread",
     "write a letter", "fix the bicycle", "sing a song", "open the window", "plant some flowers"],
    ["before it rains.", "every Sunday.", "after school.", "this morning.", "with a friend.", "at the weekend."],
)
TARGET_LANGUAGES = ["French", "Spanish", "German", "Italian", "Portuguese", "Dutch"]
REWRITES = [
    "Translate into {lang}: \"{s}\"", "How do you say \"{s}\" in {lang}?", "Rewrite this sentence in the past tense: {s}",
    "Make this sentence more formal: {s}", "Correct any mistakes in this sentence: {s}",
    "Turn this sentence into a question: {s}", "Write three sentences that continue this one: {s}",
]

PASSAGE_TASKS = [
    "Summarize the following passage in two sentences.\n\n{p}", "What is this passage about?\n\n{p}",
    "Read the passage and list the people it mentions.\n\n{p}", "Describe the mood of this passage.\n\n{p}",
    "{p}\n\nWhat happens in the passage above?", "{p}\n\nGive this passage a title and explain why.",
    "Rewrite this passage in modern, plain English.\n\n{p}", "{p}\n\nBased only on the text above, what can we say about the main character?",
    "Here is a passage from a book:\n\n{p}\n\nWrite one question about it and answer it.",
]

FOLLOW_UPS = [
    "Can you make that shorter?", "Can you give me an example?", "Why is that?", "Explain it to a ten-year-old.",
    "Can you put that as a list?", "Thanks! Can you tell me more?", "What would be a good next step?",
    "Can you say that in one sentence?", "Is there anything I should be careful about?", "Can you add a fun fact?",
]


def corpus_passages(min_chars: int = 300, max_chars: int = 900) -> list[str]:
    """Paragraphs of the shipped books' training part (the first 95%, as engines.train splits them)."""
    out = []
    for path in sorted(CORPUS_DIR.glob("*.txt")):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
        keep = int(len(paragraphs) * 0.9)   # well inside the training part
        out += [p for p in paragraphs[:keep] if min_chars <= len(p) <= max_chars]
    return out


def instructions(seed: int = 0) -> list[dict]:
    """Every instruction, shuffled with `seed`: dicts with the user's first message, its family and, for some, a
    follow-up message (a second turn)."""
    rng = random.Random(seed)
    items: list[tuple[str, str]] = []
    for t in SUBJECTS:
        for template in rng.sample(GENERAL, 20):
            items.append(("general", template.format(t=t)))
    for _ in range(1500):
        a, b = rng.sample(SUBJECTS, 2)
        items.append(("general", rng.choice(PAIRS).format(a=a, b=b)))
    for task in CODE_TASKS:
        for lang in sorted(set(LANGUAGES)):
            items.append(("code", rng.choice(CODE_TEMPLATES).format(lang=lang, task=task)))
    items += [("code", q) for q in CODE_QUESTIONS]
    for _ in range(2000):
        n, m = rng.sample(NAMES, 2)
        values = dict(n=n, m=m, x=rng.choice(THINGS), a=rng.randint(20, 400), b=rng.randint(2, 30), c=rng.randint(2, 15))
        items.append(("math", rng.choice(MATH).format(**values)))
    for _ in range(1500):
        sentence = " ".join(rng.choice(part) for part in SENTENCE_PARTS)
        items.append(("language", rng.choice(REWRITES).format(s=sentence, lang=rng.choice(TARGET_LANGUAGES))))
    passages = corpus_passages()
    for p in rng.sample(passages, min(2500, len(passages))):
        items.append(("passage", rng.choice(PASSAGE_TASKS).format(p=p)))
    rng.shuffle(items)
    out = []
    for family, text in dict.fromkeys(items):   # unique, order kept
        follow = rng.choice(FOLLOW_UPS) if rng.random() < 0.2 else None
        out.append({"family": family, "user": text, "follow_up": follow})
    return out
