"""Documents of the docstring_choice task: a signature, its docstring and 3 docstrings of other records."""

import random

DFF = "<DFF>"
NUM_CHOICES = 4


def four_way_choices(dataset, seed: int = 0):
    """Split `signature<DFF>docstring` records; the right answer sits at a seeded random position among
    3 distinct wrong docstrings drawn (seeded per record) from the other records."""

    def split(record, index):
        if DFF not in record["text"]:
            raise ValueError(f"docstring_choice: record {index} has no {DFF} between signature and docstring.")
        signature, docstring = record["text"].split(DFF, 1)
        return {"signature": signature, "docstring": docstring}

    documents = dataset.map(split, with_indices=True)
    docstrings = documents["docstring"]
    if len(set(docstrings)) < NUM_CHOICES:
        raise ValueError(f"docstring_choice needs at least {NUM_CHOICES} different docstrings.")

    def choose(record, index):
        rng = random.Random(seed * 1_000_003 + index)
        wrong = set()
        while len(wrong) < NUM_CHOICES - 1:
            candidate = docstrings[rng.randrange(len(docstrings))]
            if candidate != record["docstring"]:
                wrong.add(candidate)
        choices = sorted(wrong)
        label = rng.randrange(NUM_CHOICES)
        choices.insert(label, record["docstring"])
        return {"choices": choices, "label": label}

    return documents.map(choose, with_indices=True)
