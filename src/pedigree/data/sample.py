"""The shipped sample, generated deterministically: `python -m pedigree.data.sample`.

Writes, from one seed:
- `data/corpus/general.txt`: general text (simple English about places, animals and numbers) on
  which the embedded base model is pretrained, so that fine-tuning has a real base to adapt and
  forgetting can be measured;
- `data/raw/`: SFT rows for four automatically checkable tasks (addition, JSON formatting, list
  reversal, sorting) in two formats (alpaca, chat messages), and preference pairs; with planted
  exact duplicates, near duplicates, malformed rows and rows copied from the eval set, so that
  curation has real work to do; KTO feedback (`feedback.jsonl`: answers labelled desirable or
  not) and GRPO task prompts with their checks (`tasks.jsonl`), on prompts of their own;
- `data/eval/task.jsonl`: held-out task prompts with references and how to match them;
- `data/eval/general.jsonl`: held-out general text, the forgetting probe;
- `data/eval/general_tasks.jsonl`: cloze prompts about facts and phrases of the general text,
  which the pretrained base completes (its "general tasks", the second forgetting probe);
- `data/eval/general_chat.jsonl`: questions (facts, words, a translation) that the instruct base
  SmolLM2-135M-Instruct answers correctly through its chat template before fine-tuning: the
  forgetting probe for abilities a real model had;
- `data/replay/general.jsonl`: general questions and requests with plain answers (none about the
  facts the chat probe asks), for `sft.replay` to mix into SFT against forgetting;
- `data/text/domain.txt`: plain prose about the four tasks, one document a line, on examples of
  its own: text for continued pretraining (copied into data/raw, curation reads it as format
  text); with planted exact and near duplicates and a copied eval prompt, so that curation has
  work to do. It is not in data/raw, so the shipped pipeline's curation stays as it is.

The generator is part of the library so that the committed files can be re-created and checked
(a test regenerates them and compares bytes).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 1234

# ----------------------------------------------------------------------------- vocabulary
ANIMALS = ["cat", "dog", "fox", "owl", "horse", "rabbit", "bear", "goat", "duck", "mouse",
           "wolf", "deer", "frog", "eagle", "otter", "sheep"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "brown", "grey", "orange", "purple"]
ADJECTIVES = ["small", "quiet", "old", "young", "happy", "tired", "clever", "brave", "slow",
              "quick", "gentle", "curious"]
PLACES = ["river", "forest", "garden", "hill", "village", "field", "lake", "market", "bridge",
          "valley", "harbor", "meadow"]
VERBS = ["walked", "ran", "slept", "waited", "played", "sat", "looked", "sang", "rested", "hid"]
PREPOSITIONS = ["near", "by", "across", "behind", "under", "beside", "past", "around"]
NAMES = ["Alice", "Bruno", "Chen", "Dara", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas",
         "Kemal", "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara"]
CITIES = {"Paris": "France", "Rome": "Italy", "Madrid": "Spain", "Berlin": "Germany",
          "Lisbon": "Portugal", "Vienna": "Austria", "Oslo": "Norway", "Dublin": "Ireland",
          "Athens": "Greece", "Warsaw": "Poland", "Prague": "Czechia", "Lima": "Peru"}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
FRUITS = ["apple", "pear", "plum", "grape", "lemon", "mango", "peach", "cherry", "melon", "kiwi"]


# General sentences also name the operations the tasks ask for, so the tokenizer has words for
# them and the base model has seen sums, orders and records before fine-tuning teaches the format.
HOWTO = [
    "Add the two numbers to find the total.",
    "Sort the numbers in ascending order to put the smallest first.",
    "Reverse the order of the list and the last item comes first.",
    "Format the record as JSON with a name, an age and a city.",
]


def _sentence(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind == 6:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return f"The sum of {a} and {b} is {a + b}."
    if kind == 7:
        nums = rng.sample(range(1, 100), 3)
        low = sorted(nums)
        return (f"From small to large, {nums[0]}, {nums[1]} and {nums[2]} are "
                f"{low[0]}, {low[1]} and {low[2]}.")
    if kind == 8:
        name, age, city = rng.choice(NAMES), rng.randint(18, 90), rng.choice(list(CITIES))
        record = json.dumps({"name": name, "age": age, "city": city})
        return f"{name} is {age} years old and lives in {city}; as a record, {record}."
    if kind == 9:
        return rng.choice(HOWTO)
    if kind == 0:
        return (f"The {rng.choice(ADJECTIVES)} {rng.choice(ANIMALS)} {rng.choice(VERBS)} "
                f"{rng.choice(PREPOSITIONS)} the {rng.choice(PLACES)}.")
    if kind == 1:
        city = rng.choice(list(CITIES))
        return f"{city} is a city in {CITIES[city]}."
    if kind == 2:
        return (f"In {rng.choice(MONTHS)}, {rng.choice(NAMES)} bought {rng.randint(2, 40)} "
                f"{rng.choice(FRUITS)}s at the {rng.choice(PLACES)} market.")
    if kind == 3:
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        return f"{rng.choice(NAMES)} had {a} {rng.choice(ANIMALS)}s and found {b} more."
    if kind == 4:
        return (f"The {rng.choice(PLACES)} was {rng.choice(COLORS)} and "
                f"{rng.choice(ADJECTIVES)} in the morning.")
    return (f"{rng.choice(NAMES)} and {rng.choice(NAMES)} {rng.choice(VERBS)} to the "
            f"{rng.choice(PLACES)} with a {rng.choice(COLORS)} {rng.choice(ANIMALS)}.")


def general_paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(3, 6)))


# ----------------------------------------------------------------------------- tasks
# Each task maps an rng to (instruction, input, answer); `match` says how eval compares answers.
TaskFn = Callable[[random.Random], tuple[str, str, str]]


def task_add(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return "Add the two numbers.", f"{a} + {b}", str(a + b)


def task_json(rng: random.Random) -> tuple[str, str, str]:
    name, age, city = rng.choice(NAMES), rng.randint(18, 90), rng.choice(list(CITIES))
    record = json.dumps({"name": name, "age": age, "city": city})
    return "Format the record as JSON.", f"name: {name}; age: {age}; city: {city}", record


def task_reverse(rng: random.Random) -> tuple[str, str, str]:
    words = rng.sample(ANIMALS + COLORS + FRUITS, rng.randint(3, 5))
    return "Reverse the order of the list.", ", ".join(words), ", ".join(reversed(words))


def task_sort(rng: random.Random) -> tuple[str, str, str]:
    numbers = rng.sample(range(1, 100), rng.randint(3, 6))
    return ("Sort the numbers in ascending order.", " ".join(map(str, numbers)),
            " ".join(map(str, sorted(numbers))))


TASKS: dict[str, tuple[TaskFn, str]] = {
    "add": (task_add, "numeric"),
    "json": (task_json, "json"),
    "reverse": (task_reverse, "exact"),
    "sort": (task_sort, "exact"),
}


def prompt_text(instruction: str, input_text: str) -> str:
    """The user message an alpaca row becomes (the same rule `formats.py` applies)."""
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def _wrong_answer(task: str, answer: str, rng: random.Random) -> str:
    """A plausible but wrong answer: the rejected side of a preference pair."""
    if task == "add":
        return str(int(answer) + rng.choice([-3, -2, -1, 1, 2, 3]))
    if task == "json":
        return answer.replace('"', "'")  # not valid JSON
    if task == "reverse":
        items = answer.split(", ")
        return ", ".join(reversed(items))  # the original order: not reversed
    return " ".join(reversed(answer.split()))  # descending instead of ascending


def _unique_examples(rng: random.Random, n_per_task: int, taken: set[str]) -> list[dict]:
    """n distinct examples per task, none whose prompt is already in `taken`."""
    rows = []
    for task, (fn, match) in TASKS.items():
        made = 0
        while made < n_per_task:
            instruction, input_text, answer = fn(rng)
            prompt = prompt_text(instruction, input_text)
            if prompt in taken:
                continue
            taken.add(prompt)
            rows.append({"task": task, "instruction": instruction, "input": input_text,
                         "output": answer, "prompt": prompt, "match": match})
            made += 1
    return rows


# ----------------------------------------------------------------------------- writers
def _alpaca(row: dict) -> dict:
    return {"instruction": row["instruction"], "input": row["input"], "output": row["output"],
            "task": row["task"]}


def _chat(row: dict, rng: random.Random) -> dict:
    messages = [{"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["output"]}]
    if rng.random() < 0.3:
        messages.insert(0, {"role": "system", "content": "You are a precise assistant."})
    return {"messages": messages, "task": row["task"]}


def _near_duplicate(row: dict) -> dict:
    """The same example with other punctuation: not an exact copy, the same words."""
    near = dict(row)
    near["instruction"] = row["instruction"].rstrip(".") + "!"
    near["output"] = row["output"] + " ."
    return near


def _jsonl(rows: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                   for r in rows)


# Malformed lines a real dataset has; each must end up in rejects.jsonl with a reason.
MALFORMED_ALPACA = [
    '{"instruction": "Add the two numbers.", "input": "3 + 4", "output": "7"',  # truncated JSON
    '{"instruction": "Add the two numbers.", "input": "5 + 6"}',  # no output
    '{"instruction": 42, "input": "", "output": "forty-two"}',  # wrong type
    '{"instruction": "   ", "input": "", "output": "empty instruction"}',  # empty content
    '{"instruction": "Sort the numbers in ascending order.", "input": "3 1 2", "output": ""}',
    '{"instruction": "Describe the picture.", "input": "", "output": "<noinput>"}',  # placeholder
    '["not", "an", "object"]',
]
MALFORMED_CHAT = [
    '{"messages": [{"role": "user", "content": "Reverse the order of the list.\\n\\nred, cat"}]}',
    '{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "hello"}]}',
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}',
    '{"messages": "user: hi"}',
]


# Planted in the KTO feedback: a label that is not true or false, and a placeholder answer
# labelled desirable (labelled undesirable, a placeholder is a fair negative and is kept).
MALFORMED_FEEDBACK = [
    '{"prompt": "Add the two numbers.\\n\\n8 + 9", "completion": "17", "label": "maybe"}',
    '{"prompt": "Add the two numbers.\\n\\n9 + 8", "completion": "n/a", "label": true}',
]
# Planted in the GRPO tasks: a numeric check whose reference is not a number.
MALFORMED_TASKS = [
    '{"prompt": "Add the two numbers.\\n\\n7 + 6", "match": "numeric", "reference": "thirteen"}',
]
EVASIVE = ["I am not able to add numbers.", "Please use a calculator for that.", "n/a"]


# The JSON task's answers: a record with exactly these fields (task_json_valid checks it).
RECORD_SCHEMA = {"type": "object", "required": ["name", "age", "city"],
                 "additionalProperties": False,
                 "properties": {"name": {"type": "string"},
                                "age": {"type": "integer", "minimum": 0},
                                "city": {"type": "string"}}}


def _fresh(rng: random.Random, task: str, n: int, taken: set[str]) -> list[dict]:
    """n examples of `task` whose prompts are in no other file (eval, SFT, preferences)."""
    rows = []
    while len(rows) < n:
        instruction, input_text, answer = TASKS[task][0](rng)
        prompt = prompt_text(instruction, input_text)
        if prompt not in taken:
            taken.add(prompt)
            rows.append({"task": task, "prompt": prompt, "output": answer})
    return rows


def feedback(rng: random.Random, taken: set[str]) -> list[dict]:
    """KTO rows: each prompt answered once well (label true) and once badly (label false): a
    wrong sum or an evasion, an invalid or unasked-for record."""
    rows = []
    for r in _fresh(rng, "add", 20, taken) + _fresh(rng, "json", 10, taken):
        good, bad = r["output"], _wrong_answer(r["task"], r["output"], rng)
        if r["task"] == "add":
            if rng.random() < 0.5:
                a, b = r["prompt"].split("\n\n")[1].split(" + ")
                good = f"{a} + {b} = {good}"
            if rng.random() < 0.3:
                bad = rng.choice(EVASIVE)
        elif rng.random() < 0.3:
            record = json.loads(good)
            bad = f"{record['name']} is {record['age']} and lives in {record['city']}."
        rows.append({"prompt": r["prompt"], "completion": good, "label": True, "task": r["task"]})
        rows.append({"prompt": r["prompt"], "completion": bad, "label": False, "task": r["task"]})
    return rows


def grpo_tasks(rng: random.Random, taken: set[str]) -> list[dict]:
    """GRPO prompts with the check that rewards an answer, as the eval's task rows give it:
    sums checked as numbers, records checked against RECORD_SCHEMA."""
    rows: list = [{"task": "add", "prompt": r["prompt"], "match": "numeric",
                   "reference": r["output"]} for r in _fresh(rng, "add", 40, taken)]
    rows += [{"task": "json", "prompt": r["prompt"], "match": "json_valid",
              "schema": RECORD_SCHEMA} for r in _fresh(rng, "json", 20, taken)]
    return rows


# ----------------------------------------------------------------------------- domain text
# The first sentence of a document about each task: what the operation is.
TOPICS = {
    "add": "Addition combines two numbers into their total, whatever their order.",
    "json": "JSON writes a record as an object whose strings are quoted and whose numbers are not.",
    "reverse": "Reversing a list keeps every item and turns their order around.",
    "sort": "Sorting puts numbers in ascending order, from the smallest to the largest.",
}


def _and(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1]


def _domain_sentence(row: dict, rng: random.Random) -> str:
    """One example of a task (a `_fresh` row) told in prose. Lists are joined with "and", so no
    run of their words is an eval answer's (a list of five is matched as a 5-gram)."""
    given, out, form = row["prompt"].split("\n\n")[1], row["output"], rng.randrange(2)
    if row["task"] == "add":
        a, b = given.split(" + ")
        return f"Adding {a} and {b} gives {out}." if form else \
            f"{a} plus {b} makes {out}, and so does {b} plus {a}."
    if row["task"] == "json":
        r = json.loads(out)
        return (f"The record of {r['name']}, aged {r['age']}, from {r['city']}, is written in "
                f"JSON as {out}.") if form else \
            f"In {out}, the age {r['age']} is a number and the city {r['city']} is a string."
    if row["task"] == "reverse":
        items = given.split(", ")
        return f"Reversed, the list {_and(items)} reads {_and(items[::-1])}." if form else \
            f"The last of {_and(items)} is {items[-1]}, so it comes first when they are reversed."
    numbers, ordered = given.split(), out.split()
    return f"In ascending order, {_and(numbers)} become {_and(ordered)}." if form else \
        f"The smallest of {_and(numbers)} is {ordered[0]} and the largest is {ordered[-1]}."


def domain_text(rng: random.Random, taken: set[str], task_eval: list[dict]) -> list[str]:
    """150 documents of prose about the tasks, on examples in no other file: 144 written, then
    planted after their originals 3 exact duplicates (case and spacing differ) and 2 near
    duplicates (a word added; commas dropped), and one eval prompt copied with its answer."""
    docs = []
    for _ in range(144):
        task = rng.choice(list(TASKS))
        examples = _fresh(rng, task, rng.randint(1, 3), taken)
        docs.append(" ".join([TOPICS[task], *(_domain_sentence(r, rng) for r in examples)]))
    # Long ones: a word added to a document of 25 words leaves Jaccard far above 0.8.
    a, b, c, d, e = rng.sample([doc for doc in docs if len(doc.split()) >= 25], 5)
    planted = [(a, a.upper()), (b, "  " + b.replace(" ", "  ")), (c, c.lower() + " "),
               (d, d + " (reposted)"), (e, e.replace(",", ""))]
    for original, copy in planted:
        docs.insert(rng.randint(docs.index(original) + 1, len(docs)), copy)
    leak = rng.choice(task_eval)
    copied = leak["prompt"].replace("\n\n", " ")  # one line: the instruction, then its input
    docs.insert(rng.randrange(len(docs) + 1), f"{copied} The answer is {leak['reference']}.")
    return docs


def general_tasks() -> list[dict]:
    """Cloze prompts in the general text's own phrasing (city facts, records, market sentences,
    fixed phrases), answered by plain-text continuation: what the base model can already do."""
    rows = [{"id": f"fact-{i:03d}", "task": "fact", "prompt": f"{city} is a city in",
             "reference": country} for i, (city, country) in enumerate(sorted(CITIES.items()))]
    people = [("Nora", 30, "Rome"), ("Sami", 41, "Oslo"), ("Quinn", 57, "Lima"),
              ("Dara", 22, "Paris"), ("Lena", 66, "Vienna"), ("Jonas", 38, "Madrid"),
              ("Ines", 75, "Warsaw"), ("Chen", 49, "Dublin")]
    rows += [{"id": f"record-{i:03d}", "task": "record", "reference": city,
              "prompt": f'{name} is {age} years old and lives in {city}; as a record, '
                        f'{{"name": "{name}", "age": {age}, "city": "'}
             for i, (name, age, city) in enumerate(people)]
    purchases = [("June", "Ines", 15, "lemons", "garden"), ("March", "Rosa", 7, "pears", "river"),
                 ("May", "Kemal", 23, "apples", "lake"), ("October", "Farid", 4, "plums", "hill"),
                 ("April", "Lena", 31, "grapes", "valley"),
                 ("July", "Sami", 12, "kiwis", "forest")]
    rows += [{"id": f"market-{i:03d}", "task": "market", "reference": "market",
              "prompt": f"In {month}, {name} bought {n} {fruit} at the {place}"}
             for i, (month, name, n, fruit, place) in enumerate(purchases)]
    rows += [{"id": "phrase-000", "task": "phrase", "reference": "comes first",
              "prompt": "Reverse the order of the list and the last item"},
             {"id": "phrase-001", "task": "phrase", "reference": "smallest first",
              "prompt": "Sort the numbers in ascending order to put the"}]
    return [{**row, "match": "normalised"} for row in rows]


# Kept from 40 candidate questions: the 20 that SmolLM2-135M-Instruct (the default base, as the
# base stage dequantizes it) answers correctly and plainly, greedy, in 32 tokens. The others it
# got wrong (Rome, Madrid, Jupiter...) or right only by accident ("Kepler-41B ... similar to
# Earth"); a probe of abilities it never had would measure nothing about forgetting.
GENERAL_CHAT = [
    ("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Germany?", "Berlin"), ("What is the capital of England?", "London"),
    ("What is the capital of Russia?", "Moscow"), ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of China?", "Beijing"), ("What is the capital of Greece?", "Athens"),
    ("What is the opposite of hot?", "cold"), ("What is the opposite of up?", "down"),
    ("What is the opposite of day?", "night"),
    ("What colour is the sky on a clear day?", "blue"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What language is spoken in Brazil?", "Portuguese"),
    ("What is the first month of the year?", "January"),
    ("What is the last month of the year?", "December"),
    ("What is the plural of mouse?", "mice"), ("Translate 'hello' into Spanish.", "hola"),
    ("Who painted the Mona Lisa?", "Leonardo"), ("What is the main language of Mexico?", "Spanish"),
]


# General chat rows to replay during SFT (sft.replay): everyday questions and requests answered
# in plain sentences, the behaviour a task fine-tune wears away. None asks a chat-probe fact.
REPLAY_CHAT = [
    ("How many days are in a week?", "There are seven days in a week."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What do bees make?", "Bees make honey."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide."),
    ("What is the tallest animal?", "The giraffe is the tallest animal."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the boiling point of water at sea level?",
     "Water boils at 100 degrees Celsius at sea level."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("What do cows drink?", "Cows drink water."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("What instrument has black and white keys?", "The piano has black and white keys."),
    ("What do you call a baby cat?", "A baby cat is called a kitten."),
    ("What do you call a baby dog?", "A baby dog is called a puppy."),
    ("Which season comes after winter?", "Spring comes after winter."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet."),
    ("What shape has four equal sides?", "A square has four equal sides."),
    ("What do we call the study of living things?", "It is called biology."),
    ("Which organ pumps blood through the body?", "The heart pumps blood through the body."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("How many players are on a football team on the field?",
     "A football team has eleven players on the field."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 degrees Celsius."),
    ("Which bird is a symbol of peace?", "The dove is a symbol of peace."),
    ("What is the main ingredient of bread?", "The main ingredient of bread is flour."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
    ("What is the currency of Japan?", "The currency of Japan is the yen."),
    ("What colour are most leaves in summer?", "Most leaves are green in summer."),
    ("Which animal is known as the king of the jungle?",
     "The lion is known as the king of the jungle."),
    ("What do you use to write on a blackboard?", "You write on a blackboard with chalk."),
    ("What is the hardest natural substance?", "Diamond is the hardest natural substance."),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings."),
    ("What is the opposite of empty?", "The opposite of empty is full."),
    ("What is the past tense of run?", "The past tense of run is ran."),
    ("Translate 'thank you' into French.", "'Thank you' in French is 'merci'."),
    ("Name a fruit that is yellow.", "A banana is a yellow fruit."),
    ("Give me a word that rhymes with cat.", "Hat rhymes with cat."),
    ("Write a short sentence about the sea.", "The sea is wide, deep and full of life."),
    ("Suggest a name for a pet goldfish.", "You could call your goldfish Bubbles."),
    ("Describe the Moon in one sentence.",
     "The Moon is Earth's rocky satellite and shines by reflecting sunlight."),
    ("List three colours of the rainbow.", "Red, green and violet are colours of the rainbow."),
    ("Say good morning politely.", "Good morning! I hope you have a lovely day."),
    ("What should I do if I feel tired?", "Rest, drink some water and get enough sleep."),
    ("Give one tip for learning a language.", "Practise a little every day, out loud."),
    ("What is a good way to stay healthy?", "Eat vegetables, move every day and sleep well."),
    ("Explain what a library is.", "A library is a place where people borrow books to read."),
    ("Why do we need sleep?", "Sleep lets the body and the brain rest and recover."),
    ("What is rain?", "Rain is water that falls from clouds in drops."),
    ("What is a noun?", "A noun is a word that names a person, place or thing."),
    ("How do you greet someone in English?", "You can say hello or good afternoon."),
    ("What is the sum of ten and five?", "Ten and five make fifteen."),
    ("Count from one to five.", "One, two, three, four, five."),
    ("What is the square root of nine?", "The square root of nine is three."),
    ("Tell me one fact about the Sun.", "The Sun is a star at the centre of our solar system."),
    ("What do fish breathe with?", "Fish breathe with their gills."),
]


def replay_chat() -> list[dict]:
    """The general rows `sft.replay` mixes into SFT, as chat messages."""
    return [{"messages": [{"role": "user", "content": prompt},
                          {"role": "assistant", "content": answer}]}
            for prompt, answer in REPLAY_CHAT]


def general_chat() -> list[dict]:
    """The general-ability questions, scored by whether the answer contains the reference."""
    return [{"id": f"chat-{i:03d}", "task": "chat", "prompt": prompt, "reference": reference,
             "match": "contains"} for i, (prompt, reference) in enumerate(GENERAL_CHAT)]


def generate(root: Path, seed: int = SEED) -> dict[str, Path]:
    """Write the whole sample under `root`; returns the files written."""
    rng = random.Random(seed)
    taken: set[str] = set()
    eval_rows = _unique_examples(rng, 20, taken)
    train_rows = _unique_examples(rng, 250, taken)
    pref_rows = _unique_examples(rng, 60, taken)
    rng.shuffle(train_rows)

    half = len(train_rows) // 2
    alpaca = [_alpaca(r) for r in train_rows[:half]]
    chat = [_chat(r, rng) for r in train_rows[half:]]
    # Planted problems: exact duplicates (case and spacing differ), near duplicates, eval leaks.
    for r in rng.sample(train_rows[:half], 12):
        dup = _alpaca(r)
        dup["instruction"] = "  " + dup["instruction"].upper() + " "
        alpaca.append(dup)
    for r in rng.sample(train_rows[:half], 8):
        alpaca.append(_alpaca(_near_duplicate(r)))
    for r in rng.sample(eval_rows, 6):
        alpaca.append(_alpaca(r))
    for r in rng.sample(eval_rows, 4):
        chat.append(_chat(r, rng))
    alpaca_lines: list = alpaca + MALFORMED_ALPACA
    chat_lines: list = chat + MALFORMED_CHAT
    rng.shuffle(alpaca_lines)
    rng.shuffle(chat_lines)

    prefs: list = []
    for r in pref_rows:
        prefs.append({"prompt": r["prompt"], "chosen": r["output"],
                      "rejected": _wrong_answer(r["task"], r["output"], rng), "task": r["task"]})
    prefs.append({"prompt": "Add the two numbers.\n\n1 + 1", "chosen": "2", "rejected": "2"})
    prefs.append({"prompt": "Add the two numbers.\n\n2 + 2", "chosen": "4"})

    corpus_rng = random.Random(seed + 1)
    corpus = "\n".join(general_paragraph(corpus_rng) for _ in range(3000)) + "\n"
    probe_rng = random.Random(seed + 2)
    general = [{"id": f"general-{i:03d}", "text": general_paragraph(probe_rng)} for i in range(64)]
    task_eval = [{"id": f"{r['task']}-{i:03d}", "task": r["task"], "prompt": r["prompt"],
                  "reference": r["output"], "match": r["match"],
                  **({"schema": RECORD_SCHEMA} if r["match"] == "json" else {})}
                 for i, r in enumerate(eval_rows)]
    # Their own generators, after every other file's prompts are taken: those files keep their
    # bytes, and no prompt here is an eval, SFT or preference prompt (but one planted eval leak).
    feedback_rng, tasks_rng = random.Random(seed + 3), random.Random(seed + 4)
    feedback_lines: list = feedback(feedback_rng, taken) + MALFORMED_FEEDBACK
    feedback_rng.shuffle(feedback_lines)
    leak = next(r for r in task_eval if r["task"] == "add")
    task_lines: list = grpo_tasks(tasks_rng, taken) + MALFORMED_TASKS + [
        {k: leak[k] for k in ("task", "prompt", "match", "reference")}]
    tasks_rng.shuffle(task_lines)
    # Last, on prompts no other file has: the other files keep their bytes.
    domain = domain_text(random.Random(seed + 5), taken, task_eval)

    files = {
        "corpus": root / "data/corpus/general.txt",
        "sft_alpaca": root / "data/raw/sft_alpaca.jsonl",
        "sft_chat": root / "data/raw/sft_chat.jsonl",
        "preferences": root / "data/raw/preferences.jsonl",
        "feedback": root / "data/raw/feedback.jsonl",
        "tasks": root / "data/raw/tasks.jsonl",
        "task_eval": root / "data/eval/task.jsonl",
        "general_eval": root / "data/eval/general.jsonl",
        "general_tasks": root / "data/eval/general_tasks.jsonl",
        "general_chat": root / "data/eval/general_chat.jsonl",
        "replay": root / "data/replay/general.jsonl",
        "domain_text": root / "data/text/domain.txt",
    }
    contents = {
        "corpus": corpus,
        "sft_alpaca": _jsonl(alpaca_lines),
        "sft_chat": _jsonl(chat_lines),
        "preferences": _jsonl(prefs),
        "feedback": _jsonl(feedback_lines),
        "tasks": _jsonl(task_lines),
        "task_eval": _jsonl(task_eval),
        "general_eval": _jsonl(general),
        "general_tasks": _jsonl(general_tasks()),
        "general_chat": _jsonl(general_chat()),
        "replay": _jsonl(replay_chat()),
        "domain_text": "\n".join(domain) + "\n",
    }
    for key, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(contents[key], encoding="utf-8")
    return files


if __name__ == "__main__":
    for path in generate(Path(".")).values():
        print(path)
