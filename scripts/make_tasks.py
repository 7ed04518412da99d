#!/usr/bin/env python3
"""Writes data/tasks_train.json and data/tasks_eval.json: Alpaca-format records
({instruction, input, output}) of small tasks whose answers are short and can be checked
exactly (`lora eval --metric exact_match`).

Standard library only; a fixed seed makes the output byte-identical on every run:

    python3 scripts/make_tasks.py            # writes data/tasks_train.json, data/tasks_eval.json
    python3 scripts/make_tasks.py --check    # exits 1 if the committed files differ

Held out from training, per family (see data/README.md):
  - content: eval records use numbers from ranges (or values) and words, names, cities...
    from lists that never occur in the training file;
  - wording: every family has instruction templates used only in the eval file; about half
    of the eval records use one of them, the other half a training wording.
No (instruction, input) pair occurs in both files; the script asserts it.
"""

import argparse
import json
import os
import random
import sys

SEED = 5
TRAIN_FILE = "tasks_train.json"
EVAL_FILE = "tasks_eval.json"
EVAL_PER_FAMILY = 8

# ---------------------------------------------------------------------------------------------
# Vocabulary. Each list has a training part and a held-out (eval) part with no common entry.

TRAIN_WORDS = """
apple table river garden pencil window basket dragon forest guitar hammer island
jacket kettle ladder magnet needle orange pepper rabbit saddle tomato violin wallet yellow
zebra anchor bottle carpet doctor engine finger gravel helmet insect jungle kitten
marble number pocket puzzle rocket silver ticket tunnel valley winter bridge castle cheese
circle cotton desert flower planet spider summer sunset market parrot shadow stone cloud
train chair plant bread sugar light music water house horse mouse grape peach plum lamp
desk book door road ship star moon fish bird frog duck goat lion wolf bear tiger camel
piano drum flute paint brush paper glass metal wood sand snow rain wind fire smoke ocean
lake hill cave tree leaf root seed farm barn fence gate path tower clock watch ring crown
shield sword arrow bow coat shirt skirt sock shoe boot glove scarf hat button zipper pillow
blanket mirror spoon fork knife plate bowl cup kitchen garage attic cellar
""".split()

EVAL_WORDS = """
lantern meadow harbor pumpkin walnut blossom canyon falcon lobster pirate rainbow sparrow
thunder velvet whisker cobweb dolphin glacier hornet juniper kayak lizard mitten noodle
otter parcel quartz raven saucer thimble umbrella vortex wagon yogurt bison cactus donkey
ferret goblet hazel igloo
""".split()

TRAIN_NAMES = """Anna Ben Carla David Emma Felix Grace Henry Irene Jack Laura Mark Nina Oscar
Paula Quinn Rosa Sam Tina Victor Wendy Yusuf Zoe Leo Maya Omar Priya Hugo""".split()
EVAL_NAMES = "Beatrice Dmitri Fatima Gustav Ines Kenji Lucia Mateo Olga Ravi".split()

TRAIN_OBJECTS = [("apple", "apples"), ("book", "books"), ("marble", "marbles"), ("pencil", "pencils"),
                 ("sticker", "stickers"), ("cookie", "cookies"), ("card", "cards"), ("shell", "shells"),
                 ("coin", "coins"), ("balloon", "balloons"), ("stamp", "stamps"), ("orange", "oranges"),
                 ("cupcake", "cupcakes"), ("ribbon", "ribbons"), ("toy car", "toy cars"), ("flower", "flowers")]
EVAL_OBJECTS = [("lemon", "lemons"), ("feather", "feathers"), ("candle", "candles"), ("postcard", "postcards"),
                ("acorn", "acorns"), ("pebble", "pebbles")]

TRAIN_CITIES = """Paris Madrid Lisbon Berlin Vienna Prague Dublin Oslo Athens Cairo Lima Tokyo Seoul
Delhi Nairobi Toronto Chicago Sydney Quito Havana""".split()
EVAL_CITIES = "Helsinki Warsaw Bogota Manila Dakar Zurich".split()
TRAIN_COLORS = "red blue green yellow purple orange black white pink brown".split()
EVAL_COLORS = "teal maroon indigo beige".split()
TRAIN_PETS = "dog cat hamster parrot rabbit goldfish turtle".split()
EVAL_PETS = "ferret canary gecko".split()
TRAIN_JOBS = "teacher nurse pilot baker farmer painter chef driver".split()
EVAL_JOBS = "dentist tailor plumber".split()

DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = """January February March April May June July August September October November
December""".split()
VOWELS = set("aeiou")


def pick(split, train, held_out):
    return held_out if split == "eval" else train


def plural(n, one, many):
    return one if n == 1 else many


def ordinal(n):
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}" + {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def csv(items):
    return ", ".join(str(x) for x in items)


# ---------------------------------------------------------------------------------------------
# Families. Each has training templates, eval-only templates, and a content function
# content(rng, split) -> dict of template fields plus "output". A template is
# (instruction, input); fields are filled with str.format.

FAMILIES = []


def family(name, train_count, train_templates, eval_templates):
    def register(content):
        FAMILIES.append(dict(name=name, count=train_count, train=train_templates, eval=eval_templates,
                             content=content))
        return content
    return register


# Arithmetic word problems. Train operands 1..25; eval has an operand in 26..40.
@family("add", 130, [
    ("{name} has {a} {objs} and gets {b} more. How many {objs} does {name} have now?", ""),
    ("There are {a} {objs} in a box. {name} puts in {b} more. How many {objs} are in the box?", ""),
    ("Solve the word problem.", "{name} picked {a} {objs} in the morning and {b} {objs} in the afternoon. How many {objs} did {name} pick in all?"),
    ("What is {a} plus {b}?", ""),
], [
    ("{name} owned {a} {objs}. A friend gave {name} another {b}. What is the total number of {objs} now?", ""),
    ("Answer with a number.", "A shelf holds {a} {objs} and a second shelf holds {b}. How many {objs} are on both shelves?"),
])
def add(rng, split):
    if split == "train":
        a, b = rng.randint(1, 25), rng.randint(1, 25)
    else:
        a, b = rng.randint(26, 40), rng.randint(1, 40)
        if rng.random() < 0.5:
            a, b = b, a
    obj = rng.choice(pick(split, TRAIN_OBJECTS, EVAL_OBJECTS))
    return dict(name=rng.choice(pick(split, TRAIN_NAMES, EVAL_NAMES)), objs=obj[1], a=a, b=b, output=str(a + b))


# Train minuend 2..30; eval minuend 31..50.
@family("subtract", 130, [
    ("{name} had {a} {objs} and gave away {b}. How many {objs} does {name} have left?", ""),
    ("There were {a} {objs} on the table. {name} took {b} of them. How many {objs} are still on the table?", ""),
    ("Solve the word problem.", "A jar held {a} {objs}. {name} removed {b}. How many {objs} remain in the jar?"),
    ("What is {a} minus {b}?", ""),
], [
    ("{name} started with {a} {objs} and lost {b}. How many {objs} are left?", ""),
    ("Answer with a number.", "A bag contains {a} {objs}. {name} eats or uses {b} of them. How many {objs} are left in the bag?"),
])
def subtract(rng, split):
    a = rng.randint(2, 30) if split == "train" else rng.randint(31, 50)
    b = rng.randint(1, a - 1)
    obj = rng.choice(pick(split, TRAIN_OBJECTS, EVAL_OBJECTS))
    return dict(name=rng.choice(pick(split, TRAIN_NAMES, EVAL_NAMES)), objs=obj[1], a=a, b=b, output=str(a - b))


# Train factors 2..9; eval has a factor in 10..12.
@family("multiply", 130, [
    ("There are {a} boxes with {b} {objs} in each box. How many {objs} are there in total?", ""),
    ("{name} buys {a} packs of {objs}. Each pack has {b} {objs}. How many {objs} does {name} buy?", ""),
    ("Solve the word problem.", "{name} puts {b} {objs} on each of {a} plates. How many {objs} are on the plates?"),
    ("What is {a} times {b}?", ""),
], [
    ("Each of {a} children has {b} {objs}. How many {objs} do the children have together?", ""),
    ("Answer with a number.", "{name} makes {a} rows of {objs} with {b} {objs} in every row. How many {objs} are there?"),
])
def multiply(rng, split):
    if split == "train":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
    else:
        a, b = rng.randint(10, 12), rng.randint(2, 9)
        if rng.random() < 0.5:
            a, b = b, a
    obj = rng.choice(pick(split, TRAIN_OBJECTS, EVAL_OBJECTS))
    return dict(name=rng.choice(pick(split, TRAIN_NAMES, EVAL_NAMES)), objs=obj[1], a=a, b=b, output=str(a * b))


# Unit conversion to the smaller unit. Train values 1..30; eval values 31..60.
UNITS = [("kilometer", "kilometers", "meters", 1000), ("meter", "meters", "centimeters", 100),
         ("centimeter", "centimeters", "millimeters", 10), ("kilogram", "kilograms", "grams", 1000),
         ("liter", "liters", "milliliters", 1000), ("hour", "hours", "minutes", 60),
         ("minute", "minutes", "seconds", 60), ("day", "days", "hours", 24), ("week", "weeks", "days", 7),
         ("year", "years", "months", 12)]


@family("unit_conversion", 140, [
    ("Convert {v} {unit} to {to}.", ""),
    ("How many {to} are in {v} {unit}?", ""),
    ("{v} {unit} is how many {to}?", ""),
    ("Convert the following amount to {to}.", "{v} {unit}"),
], [
    ("Express {v} {unit} in {to}.", ""),
    ("Give the number of {to} in this amount.", "{v} {unit}"),
])
def unit_conversion(rng, split):
    v = rng.randint(1, 30) if split == "train" else rng.randint(31, 60)
    one, many, to, factor = rng.choice(UNITS)
    return dict(v=v, unit=plural(v, one, many), to=to, output=str(v * factor))


# Day of the week N days later / earlier. Eval uses N in {6, 13, 17}; train the rest of 1..20.
WEEKDAY_EVAL_N = [6, 13, 17]
WEEKDAY_TRAIN_N = [n for n in range(1, 21) if n not in WEEKDAY_EVAL_N]


@family("weekday_after", 120, [
    ("What day of the week is {n} {days} after {day}?", ""),
    ("If today is {day}, what day will it be in {n} {days}?", ""),
    ("Starting on {day}, count forward {n} {days}. Which day of the week is it?", ""),
    ("What day of the week comes {n} {days} after the given day?", "{day}"),
], [
    ("If it is {day} today, which day of the week will it be {n} {days} from now?", ""),
    ("Name the weekday {n} {days} later than this one.", "{day}"),
])
def weekday_after(rng, split):
    n = rng.choice(pick(split, WEEKDAY_TRAIN_N, WEEKDAY_EVAL_N))
    d = rng.randrange(7)
    return dict(n=n, days=plural(n, "day", "days"), day=DAYS[d], output=DAYS[(d + n) % 7])


@family("weekday_before", 110, [
    ("What day of the week is {n} {days} before {day}?", ""),
    ("If today is {day}, what day was it {n} {days} ago?", ""),
    ("Starting on {day}, count back {n} {days}. Which day of the week is it?", ""),
], [
    ("If it is {day} today, which day of the week was it {n} {days} earlier?", ""),
    ("Name the weekday {n} {days} before this one.", "{day}"),
])
def weekday_before(rng, split):
    n = rng.choice(pick(split, WEEKDAY_TRAIN_N, WEEKDAY_EVAL_N))
    d = rng.randrange(7)
    return dict(n=n, days=plural(n, "day", "days"), day=DAYS[d], output=DAYS[(d - n) % 7])


# Month N months later. Eval uses N in {5, 8}; train the rest of 1..11.
MONTH_EVAL_N = [5, 8]
MONTH_TRAIN_N = [n for n in range(1, 12) if n not in MONTH_EVAL_N]


@family("month_after", 100, [
    ("What month is {n} {months} after {month}?", ""),
    ("If it is {month} now, what month will it be in {n} {months}?", ""),
    ("Which month comes {n} {months} after the given month?", "{month}"),
], [
    ("Count {n} {months} forward from {month}. Which month do you reach?", ""),
    ("Name the month that is {n} {months} later than this one.", "{month}"),
])
def month_after(rng, split):
    n = rng.choice(pick(split, MONTH_TRAIN_N, MONTH_EVAL_N))
    m = rng.randrange(12)
    return dict(n=n, months=plural(n, "month", "months"), month=MONTHS[m], output=MONTHS[(m + n) % 12])


# 24-hour clock, whole hours. Eval adds 7 or 11 hours; train 1..12 except those.
CLOCK_EVAL_H = [7, 11]
CLOCK_TRAIN_H = [h for h in range(1, 13) if h not in CLOCK_EVAL_H]


@family("clock", 110, [
    ("It is {t} now. What time will it be in {h} {hours}? Use the 24-hour clock.", ""),
    ("What time is {h} {hours} after {t} on a 24-hour clock?", ""),
    ("Add {h} {hours} to the time below (24-hour clock, HH:MM).", "{t}"),
], [
    ("On a 24-hour clock, a train leaves at {t} and arrives {h} {hours} later. At what time does it arrive?", ""),
    ("Give the 24-hour time {h} {hours} after this one.", "{t}"),
])
def clock(rng, split):
    h = rng.choice(pick(split, CLOCK_TRAIN_H, CLOCK_EVAL_H))
    t = rng.randrange(24)
    return dict(h=h, hours=plural(h, "hour", "hours"), t=f"{t:02d}:00", output=f"{(t + h) % 24:02d}:00")


# String transformations on single words. Eval words never occur in train.
@family("reverse_word", 130, [
    ("Reverse the word \"{w}\".", ""),
    ("Spell the following word backwards.", "{w}"),
    ("Write \"{w}\" with its letters in reverse order.", ""),
    ("Reverse this word.", "{w}"),
], [
    ("What is \"{w}\" spelled backwards?", ""),
    ("Write the word below from its last letter to its first.", "{w}"),
])
def reverse_word(rng, split):
    w = rng.choice(pick(split, TRAIN_WORDS, EVAL_WORDS))
    return dict(w=w, output=w[::-1])


@family("uppercase", 120, [
    ("Write the word \"{w}\" in capital letters.", ""),
    ("Convert the following word to uppercase.", "{w}"),
    ("Change \"{w}\" to all uppercase letters.", ""),
], [
    ("Give \"{w}\" written entirely in upper case.", ""),
    ("Rewrite this word using only capital letters.", "{w}"),
])
def uppercase(rng, split):
    w = rng.choice(pick(split, TRAIN_WORDS, EVAL_WORDS))
    return dict(w=w, output=w.upper())


@family("first_letter", 110, [
    ("What is the first letter of the word \"{w}\"?", ""),
    ("Give the first letter of the following word.", "{w}"),
    ("Which letter does \"{w}\" start with?", ""),
], [
    ("Name the letter at the beginning of \"{w}\".", ""),
    ("Which letter comes first in this word?", "{w}"),
])
def first_letter(rng, split):
    w = rng.choice(pick(split, TRAIN_WORDS, EVAL_WORDS))
    return dict(w=w, output=w[0])


@family("last_letter", 110, [
    ("What is the last letter of the word \"{w}\"?", ""),
    ("Give the last letter of the following word.", "{w}"),
    ("Which letter does \"{w}\" end with?", ""),
], [
    ("Name the letter at the end of \"{w}\".", ""),
    ("Which letter comes last in this word?", "{w}"),
])
def last_letter(rng, split):
    w = rng.choice(pick(split, TRAIN_WORDS, EVAL_WORDS))
    return dict(w=w, output=w[-1])


@family("count_letters", 120, [
    ("How many letters are in the word \"{w}\"?", ""),
    ("Count the letters in the following word.", "{w}"),
    ("How long is the word \"{w}\", in letters?", ""),
], [
    ("Give the number of letters in \"{w}\".", ""),
    ("How many letters does this word have?", "{w}"),
])
def count_letters(rng, split):
    w = rng.choice(pick(split, TRAIN_WORDS, EVAL_WORDS))
    return dict(w=w, output=str(len(w)))


@family("count_char", 120, [
    ("How many times does the letter \"{c}\" appear in \"{w}\"?", ""),
    ("Count how often the letter \"{c}\" occurs in the following word.", "{w}"),
    ("How many \"{c}\" letters are in the word \"{w}\"?", ""),
], [
    ("In the word \"{w}\", count the occurrences of \"{c}\".", ""),
    ("How many times is the letter \"{c}\" used in this word?", "{w}"),
])
def count_char(rng, split):
    w = rng.choice(pick(split, TRAIN_WORDS, EVAL_WORDS))
    if rng.random() < 0.85:
        c = rng.choice(sorted(set(w)))
    else:
        c = rng.choice(sorted(set("abcdefghijklmnopqrstuvwxyz") - set(w)))
    return dict(w=w, c=c, output=str(w.count(c)))


@family("remove_vowels", 120, [
    ("Remove all vowels (a, e, i, o, u) from the word \"{w}\".", ""),
    ("Delete the vowels from the following word.", "{w}"),
    ("Write \"{w}\" without its vowels.", ""),
], [
    ("Give \"{w}\" with every a, e, i, o and u taken out.", ""),
    ("Strip the vowels out of this word.", "{w}"),
])
def remove_vowels(rng, split):
    w = rng.choice(pick(split, TRAIN_WORDS, EVAL_WORDS))
    return dict(w=w, output="".join(ch for ch in w if ch not in VOWELS))


# Lists. Eval words are held out; eval numbers come from 50..99 (train 1..49).
@family("sort_words", 130, [
    ("Sort these words in alphabetical order.", "{items}"),
    ("Put the following words in alphabetical order, separated by commas.", "{items}"),
    ("Arrange the words alphabetically: {items}", ""),
], [
    ("List these words from A to Z.", "{items}"),
    ("Order the words below alphabetically.", "{items}"),
])
def sort_words(rng, split):
    ws = rng.sample(pick(split, TRAIN_WORDS, EVAL_WORDS), rng.randint(3, 4))
    return dict(items=csv(ws), output=csv(sorted(ws)))


def numbers(rng, split, k):
    return rng.sample(range(1, 50) if split == "train" else range(50, 100), k)


@family("sort_numbers", 130, [
    ("Sort these numbers from smallest to largest.", "{items}"),
    ("Put the following numbers in ascending order.", "{items}"),
    ("Sort these numbers from largest to smallest.", "{items}|desc"),
    ("Put the following numbers in descending order.", "{items}|desc"),
], [
    ("Order the numbers below from lowest to highest.", "{items}"),
    ("Order the numbers below from highest to lowest.", "{items}|desc"),
])
def sort_numbers(rng, split):
    xs = numbers(rng, split, rng.randint(3, 5))
    return dict(items=csv(xs), output=csv(sorted(xs)), output_desc=csv(sorted(xs, reverse=True)))


@family("list_max", 110, [
    ("What is the largest number in this list?", "{items}"),
    ("Find the maximum of the following numbers.", "{items}"),
    ("Which is the biggest number: {items}?", ""),
], [
    ("Give the highest value in the list below.", "{items}"),
    ("Out of {items}, which number is greatest?", ""),
])
def list_max(rng, split):
    xs = numbers(rng, split, rng.randint(3, 6))
    return dict(items=csv(xs), output=str(max(xs)))


@family("list_min", 110, [
    ("What is the smallest number in this list?", "{items}"),
    ("Find the minimum of the following numbers.", "{items}"),
    ("Which is the smallest number: {items}?", ""),
], [
    ("Give the lowest value in the list below.", "{items}"),
    ("Out of {items}, which number is least?", ""),
])
def list_min(rng, split):
    xs = numbers(rng, split, rng.randint(3, 6))
    return dict(items=csv(xs), output=str(min(xs)))


# Sum of 2 or 3 numbers: train 1..15 each, eval 16..25 each.
@family("list_sum", 120, [
    ("What is the sum of these numbers?", "{items}"),
    ("Add up the following numbers.", "{items}"),
    ("Compute the total of {items}.", ""),
], [
    ("Give the sum of the list below.", "{items}"),
    ("What do {items} add up to?", ""),
])
def list_sum(rng, split):
    k = rng.randint(2, 3)
    xs = [rng.randint(1, 15) if split == "train" else rng.randint(16, 25) for _ in range(k)]
    return dict(items=csv(xs), output=str(sum(xs)))


@family("count_items", 110, [
    ("How many items are in this list?", "{items}"),
    ("Count the words in the following comma-separated list.", "{items}"),
    ("How many things are listed here: {items}?", ""),
], [
    ("Give the number of entries in the list below.", "{items}"),
    ("How many words does this list contain?", "{items}"),
])
def count_items(rng, split):
    ws = rng.sample(pick(split, TRAIN_WORDS, EVAL_WORDS), rng.randint(2, 7))
    return dict(items=csv(ws), output=str(len(ws)))


# A field of a small JSON object. Eval values come from held-out lists; eval ages 71..90.
@family("json_field", 140, [
    ("What is the value of the \"{key}\" field in this JSON object?", "{obj}"),
    ("Extract the \"{key}\" value from the following JSON.", "{obj}"),
    ("Read the JSON object and give its \"{key}\".", "{obj}"),
], [
    ("From the JSON record below, return the value stored under \"{key}\".", "{obj}"),
    ("Look up \"{key}\" in this JSON data.", "{obj}"),
])
def json_field(rng, split):
    values = {
        "name": lambda: rng.choice(pick(split, TRAIN_NAMES, EVAL_NAMES)),
        "age": lambda: rng.randint(18, 70) if split == "train" else rng.randint(71, 90),
        "city": lambda: rng.choice(pick(split, TRAIN_CITIES, EVAL_CITIES)),
        "color": lambda: rng.choice(pick(split, TRAIN_COLORS, EVAL_COLORS)),
        "pet": lambda: rng.choice(pick(split, TRAIN_PETS, EVAL_PETS)),
        "job": lambda: rng.choice(pick(split, TRAIN_JOBS, EVAL_JOBS)),
    }
    keys = ["name"] + rng.sample(sorted(k for k in values if k != "name"), rng.randint(1, 3))
    obj = {k: values[k]() for k in keys}
    key = rng.choice(keys)
    return dict(key=key, obj=json.dumps(obj), output=str(obj[key]))


# Numbers: train 1..99 (parity, next/previous: 1..199), eval 100..999 (200..999).
@family("compare", 120, [
    ("Which number is larger, {a} or {b}?", ""),
    ("Which number is smaller, {a} or {b}?", "|min"),
    ("Give the larger of the two numbers.", "{a}, {b}"),
    ("Give the smaller of the two numbers.", "{a}, {b}|min"),
], [
    ("Of {a} and {b}, which is greater?", ""),
    ("Of {a} and {b}, which is less?", "|min"),
])
def compare(rng, split):
    lo, hi = (1, 99) if split == "train" else (100, 999)
    a, b = rng.sample(range(lo, hi + 1), 2)
    return dict(a=a, b=b, output=str(max(a, b)), output_min=str(min(a, b)))


@family("parity", 110, [
    ("Is {n} even or odd?", ""),
    ("Tell whether the following number is even or odd.", "{n}"),
    ("Answer even or odd: {n}", ""),
], [
    ("Is the number {n} odd or even?", ""),
    ("Say if this number is even or odd.", "{n}"),
])
def parity(rng, split):
    n = rng.randint(1, 199) if split == "train" else rng.randint(200, 999)
    return dict(n=n, output="even" if n % 2 == 0 else "odd")


@family("next_number", 110, [
    ("What number comes after {n}?", ""),
    ("What number comes right before {n}?", "|prev"),
    ("Give the next whole number after the following number.", "{n}"),
    ("Give the whole number just before the following number.", "{n}|prev"),
], [
    ("Which integer follows {n}?", ""),
    ("Which integer comes immediately before {n}?", "|prev"),
])
def next_number(rng, split):
    n = rng.randint(2, 199) if split == "train" else rng.randint(200, 999)
    return dict(n=n, output=str(n + 1), output_prev=str(n - 1))


# Alphabet order. Eval letters h, p, v; train the other letters a..y.
LETTERS = "abcdefghijklmnopqrstuvwxyz"
LETTER_EVAL = list("hpv")
LETTER_TRAIN = [c for c in LETTERS[:-1] if c not in LETTER_EVAL]


@family("next_letter", 60, [
    ("Which letter comes after \"{c}\" in the alphabet?", ""),
    ("What is the next letter of the alphabet after \"{c}\"?", ""),
    ("Give the letter that follows this one in the alphabet.", "{c}"),
], [
    ("In alphabetical order, which letter is right after \"{c}\"?", ""),
    ("Name the letter that comes next in the alphabet.", "{c}"),
])
def next_letter(rng, split):
    c = rng.choice(pick(split, LETTER_TRAIN, LETTER_EVAL))
    return dict(c=c, output=LETTERS[LETTERS.index(c) + 1])


# ---------------------------------------------------------------------------------------------

def render(fam, rng, split):
    """One record. A template's input may end in |KEY to answer with the content's output_KEY."""
    content = fam["content"](rng, split)
    templates = fam["train"]
    if split == "eval" and rng.random() < 0.5:
        templates = fam["eval"]
    instruction, input_ = rng.choice(templates)
    output_key = "output"
    if "|" in input_:
        input_, suffix = input_.split("|")
        output_key = "output_" + suffix
    return {"instruction": instruction.format(**content), "input": input_.format(**content),
            "output": content[output_key]}


def generate(split, count_of, exclude):
    rng = random.Random(f"{SEED}-{split}")
    records, seen = [], set(exclude)
    for fam in FAMILIES:
        want = count_of(fam)
        got = 0
        for _ in range(want * 200):
            if got == want:
                break
            r = render(fam, rng, split)
            key = (r["instruction"], r["input"])
            if key in seen:
                continue
            seen.add(key)
            r["family"] = fam["name"]
            records.append(r)
            got += 1
        if got < want:
            sys.exit(f"{split}: family {fam['name']} gave only {got} distinct records of {want}")
    rng.shuffle(records)
    return records


def serialize(records):
    """A JSON list with one record per line: small, and diffs read well."""
    lines = [json.dumps({k: r[k] for k in ("instruction", "input", "output")}, ensure_ascii=False)
             for r in records]
    return "[\n" + ",\n".join(lines) + "\n]\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"),
                        help="output folder (default: the repository's data/)")
    parser.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = parser.parse_args()

    assert not set(TRAIN_WORDS) & set(EVAL_WORDS), set(TRAIN_WORDS) & set(EVAL_WORDS)
    assert len(set(TRAIN_WORDS)) == len(TRAIN_WORDS) and len(set(EVAL_WORDS)) == len(EVAL_WORDS)
    for a, b in [(TRAIN_NAMES, EVAL_NAMES), (TRAIN_OBJECTS, EVAL_OBJECTS), (TRAIN_CITIES, EVAL_CITIES),
                 (TRAIN_COLORS, EVAL_COLORS), (TRAIN_PETS, EVAL_PETS), (TRAIN_JOBS, EVAL_JOBS)]:
        assert not set(a) & set(b), set(a) & set(b)
    held_out = set(EVAL_WORDS + EVAL_NAMES + EVAL_CITIES + EVAL_COLORS + EVAL_PETS + EVAL_JOBS) | {o for p in EVAL_OBJECTS for o in p}
    seen_in_train = set(TRAIN_WORDS + TRAIN_NAMES + TRAIN_CITIES + TRAIN_COLORS + TRAIN_PETS + TRAIN_JOBS) | {o for p in TRAIN_OBJECTS for o in p}
    assert not held_out & seen_in_train, held_out & seen_in_train
    for fam in FAMILIES:
        assert not set(fam["train"]) & set(fam["eval"]), fam["name"]

    eval_records = generate("eval", lambda f: EVAL_PER_FAMILY, exclude=())
    eval_keys = {(r["instruction"], r["input"]) for r in eval_records}
    train_records = generate("train", lambda f: f["count"], exclude=eval_keys)
    assert not eval_keys & {(r["instruction"], r["input"]) for r in train_records}

    outputs = {TRAIN_FILE: (train_records, serialize(train_records)), EVAL_FILE: (eval_records, serialize(eval_records))}
    status = 0
    for name, (records, text) in outputs.items():
        path = os.path.normpath(os.path.join(args.out, name))
        if args.check:
            try:
                with open(path, encoding="utf-8") as f:
                    same = f.read() == text
            except FileNotFoundError:
                same = False
            print(f"{path}: {'up to date' if same else 'DIFFERS'}")
            status |= 0 if same else 1
        else:
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
            print(f"wrote {path}: {len(records)} records, {len(text.encode())} bytes")
    if not args.check:
        counts = {}
        for r in train_records:
            counts[r["family"]] = counts.get(r["family"], 0) + 1
        print(f"{len(FAMILIES)} families (train records each): " +
              ", ".join(f"{k} {v}" for k, v in counts.items()))
    return status


if __name__ == "__main__":
    sys.exit(main())
