"""The prompts both speculative-decoding benchmarks (spec_decode.py, spec_serve.py) use: code,
a code edit that repeats its input (where prompt lookup pays), and prose."""

PROMPTS = {
    "code": "Write a Python function that parses a CSV file into a list of dicts, with a docstring.",
    "code-edit": "Rename the variable `total` to `sum_of_values` in this code and show the whole result:\n"
                 "def add_all(values):\n    total = 0\n    for v in values:\n        total += v\n"
                 "    if total > 100:\n        print('big total', total)\n    return total\n",
    "prose": "Write a short paragraph about the history of the printing press.",
}
