"""Math grader: answer extraction, normalisation and equivalence, true and false cases.

The cases are written by hand in the forms competition answers take (MATH, AIME,
AMC, Olympiad style). Each row is (response, ground truth, expected score).
"""
import time

import pytest

from prime_megatron.reward.manager import call_bounded
from prime_megatron.reward.math import (
    compute_math_score, extract_answer, extract_boxed, grade_math, normalize_answer)


def boxed(answer: str) -> str:
    return f"Working through the algebra carefully, we conclude that \\boxed{{{answer}}}."


# (answer inside \boxed, ground truth, equivalent?)
BOXED_CASES = [
    # integers, signs, decimals
    ("42", "42", True), ("-7", "-7", True), ("042", "42", True), ("42.0", "42", True),
    ("43", "42", False), ("-42", "42", False), ("4.2", "42", False), ("0", "0", True),
    # fractions vs decimals, \dfrac, \tfrac, slashes
    ("\\frac{1}{2}", "0.5", True), ("\\dfrac{1}{2}", "\\frac12", True), ("\\tfrac{3}{4}", "0.75", True),
    ("1/2", "\\frac{1}{2}", True), ("\\frac{2}{4}", "\\frac{1}{2}", True), ("\\frac{-1}{3}", "-\\frac{1}{3}", True),
    ("\\frac{1}{3}", "0.5", False), ("\\frac{3}{2}", "\\frac{2}{3}", False), ("0.75", "\\frac{3}{5}", False),
    ("\\frac{7}{2}", "3.5", True), ("3\\frac{1}{2}", "3.5", True),  # a mixed number, as contests write it
    ("\\frac{10}{4}", "2.5", True), ("2.50", "\\frac{5}{2}", True), ("0.2", "\\frac{1}{5}", True),
    ("0.125", "\\frac{1}{8}", True), ("\\frac{1}{8}", "0.12", False),
    # radicals and constants
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True), ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt2}{2}", True),
    ("2\\sqrt{3}", "\\sqrt{12}", True), ("\\sqrt{8}", "2\\sqrt{2}", True), ("\\sqrt{3}", "\\sqrt{2}", False),
    ("3\\sqrt{2}", "2\\sqrt{3}", False), ("\\sqrt[3]{8}", "2", True), ("4\\pi", "4\\pi", True),
    ("2\\pi", "\\pi", False), ("\\frac{\\pi}{2}", "\\frac{1}{2}\\pi", True), ("\\pi", "3.14", False),
    ("e^{2}", "e^2", True), ("\\ln 8", "3\\ln 2", True), ("\\log_2 8", "3", True),
    ("5+2\\sqrt{6}", "(\\sqrt{2}+\\sqrt{3})^2", True), ("5+2\\sqrt{6}", "5-2\\sqrt{6}", False),
    # \left \right and grouping
    ("\\left(\\frac{1}{2}\\right)^2", "\\frac14", True), ("\\left( 3, 4 \\right)", "(3,4)", True),
    ("\\left[ 1, 2 \\right]", "[1,2]", True),
    # units and text
    ("5\\text{ cm}", "5", True), ("12 \\text{ meters}", "12", True), ("3\\text{ hours}", "4", False),
    ("\\text{5}", "5", True), ("7\\mbox{ dollars}", "7", True), ("\\$18.90", "18.90", True),
    ("18.9", "18.90", True), ("\\$20", "19", False),
    # degrees and percent
    ("30^\\circ", "30", True), ("30^{\\circ}", "30", True), ("45°", "45", True), ("60", "60^\\circ", True),
    ("30^\\circ", "60", False), ("25\\%", "25", True), ("25\\%", "25\\%", True), ("50\\%", "25", False),
    ("90 degrees", "90", True),
    # thousands separators
    ("1,000", "1000", True), ("12,345,678", "12345678", True), ("1{,}000", "1000", True), ("1,001", "1000", False),
    ("1\\,000", "1000", True), ("2,500.5", "2500.5", True),
    # x = ... and equations
    ("x = 5", "5", True), ("x=5", "5", True), ("y = -\\frac{1}{2}", "-0.5", True), ("x = 6", "5", False),
    ("n = 12", "12", True), ("k=3", "4", False), ("a_1 = 7", "7", True),
    # expressions equal up to simplification
    ("x^2+2x+1", "(x+1)^2", True), ("(x-1)(x+1)", "x^2-1", True), ("2(x+3)", "2x+6", True),
    ("x^2-1", "(x-1)^2", False), ("\\frac{x^2-1}{x-1}", "x+1", True), ("\\sin^2 x + \\cos^2 x", "1", True),
    ("3x+2y", "2y+3x", True), ("3x-2y", "2y-3x", False), ("a^2b", "ba^2", True), ("x^3", "x^2", False),
    ("\\frac{1}{x}+\\frac{1}{y}", "\\frac{x+y}{xy}", True), ("2^{10}", "1024", True), ("10!", "3628800", True),
    ("\\binom{5}{2}", "10", True), ("\\binom{6}{3}", "15", False),
    # intervals
    ("[1,3)", "[1, 3)", True), ("(2, \\infty)", "(2,\\infty)", True), ("(-\\infty, 0]", "(-\\infty,0]", True),
    ("[1,3]", "[1,3)", False), ("(0,1)", "[0,1]", False), ("[-2, 5]", "[-2,5]", True),
    ("(-\\infty,-1)\\cup(1,\\infty)", "(-\\infty,-1) \\cup (1,\\infty)", True),
    ("(-\\infty,-1)\\cup(1,\\infty)", "(-\\infty,-1]\\cup[1,\\infty)", False),
    # tuples, points, sets, lists of roots
    ("(3,4)", "(3, 4)", True), ("(4,3)", "(3,4)", False), ("(1,2,3)", "(1,2,3)", True), ("(1,2)", "(1,2,3)", False),
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True), ("\\{1,2\\}", "\\{1,3\\}", False), ("2, 3", "3, 2", True),
    ("1, -1", "-1,1", True), ("1,2", "1,3", False), ("(\\frac12, 2)", "(0.5, 2)", True),
    # matrices and vectors
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}", False),
    ("\\begin{bmatrix}0.5\\\\1\\end{bmatrix}", "\\begin{pmatrix}\\frac12\\\\1\\end{pmatrix}", True),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}", False),
    # complex numbers
    ("3+4i", "4i+3", True), ("3-4i", "3+4i", False),
    # scientific notation and large numbers
    ("1.5\\times10^{3}", "1500", True), ("2\\times 10^{-2}", "0.02", True), ("10^{6}", "1000000", True),
    ("3\\times10^{3}", "300", False),
    # text answers
    ("\\text{yes}", "yes", True), ("\\text{(C)}", "(C)", True),
]

# Whole responses: the extraction forms Eurus-2 prompts and common model outputs produce.
RESPONSE_CASES = [
    ("First $a=2$ and $b=3$, so the sum is \\boxed{5}.", "5", True),
    ("We try \\boxed{4} but that fails. Correcting, the answer is \\boxed{6}.", "6", True),
    ("We try \\boxed{4} but that fails. Correcting, the answer is \\boxed{6}.", "4", False),
    ("Hence \\boxed{\\frac{\\sqrt{3}}{2}}.", "\\frac{\\sqrt3}{2}", True),
    ("Nested: \\boxed{\\left\\{ \\frac{1}{2}, \\frac{3}{4} \\right\\}}", "\\{0.5, 0.75\\}", True),
    ("So the result is \\fbox{12}.", "12", True),
    ("So the result is \\boxed 7 as required.", "7", True),
    ("The answer is 17.", "17", True),
    ("The answer is $\\frac{2}{3}$.", "\\frac{2}{3}", True),
    ("The answer is 18.", "17", False),
    ("Final answer: 256", "256", True),
    ("[ASSESS]\nWe need the area.\n\n[ADVANCE]\nArea = 6 * 4 = 24.\n\n[OUTPUT]\nThe area of the rectangle is 24.",
     "24", True),
    ("[ASSESS]\nFind x.\n[ADVANCE]\nx = 3.\n[OUTPUT]\nThe final answer is: $\\boxed{3}$", "3", True),
    ("[ADVANCE]\nSo x = 2.\n[OUTPUT]\nTherefore the answer is $x = 2$.", "2", True),
    ("[ADVANCE]\nSo x = 2.\n[OUTPUT]\nThe final value is\n\n$\\frac{7}{3}$", "\\frac{7}{3}", True),
    ("[ADVANCE]\nSo x = 2.\n[OUTPUT]\nThe final value is\n\n$\\frac{7}{3}$", "2", False),
    ("[OUTPUT] 1,234", "1234", True),
    ("I could not solve this problem.", "5", False),
    ("", "5", False),
    ("\\boxed{}", "5", False),
    ("The probability is \\boxed{\\dfrac{1}{6}}", "0.16666666666666666", True),
    ("Angle: \\boxed{120^\\circ}", "120", True),
    ("Total cost \\boxed{\\$1,250}", "1250", True),
    ("So \\boxed{x=\\frac{-b}{2a}}", "-\\frac{b}{2a}", True),
    ("Then $\\boxed{(1, -2)}$", "(1,-2)", True),
    ("Then $\\boxed{(1, -2)}$", "(-2,1)", False),
    ("\\boxed{[2, 7)}", "[2,7)", True),
    ("\\boxed{\\frac{9\\pi}{4}}", "\\frac{9}{4}\\pi", True),
    ("\\boxed{2\\sqrt{5}} is the distance", "\\sqrt{20}", True),
    ("[OUTPUT]\nThe roots sum to $-\\frac{5}{2}$ in total.", "-2.5", True),
    ("[OUTPUT]\nThe roots sum to $-\\frac{5}{2}$ in total.", "2.5", False),
    ("[OUTPUT]\nWe counted 1,024 paths.", "1024", True),
    ("The answer is: \\(\\sqrt{7}\\)", "\\sqrt{7}", True),
    ("so the answer is $\\boxed{\\frac{a+b}{2}}$", "\\frac{b+a}{2}", True),
    ("so the answer is $\\boxed{\\frac{a+b}{2}}$", "\\frac{a-b}{2}", False),
    ("The minimum is attained at \\boxed{x=-1}", "-1", True),
    ("\\boxed{\\frac{3}{7}}\n\nI hope it is correct.", "\\frac{3}{7}", True),
    ("Therefore \\boxed{0.333}", "\\frac{1}{3}", False),
    ("Therefore \\boxed{\\infty}", "\\infty", True),
    ("Therefore \\boxed{-\\infty}", "\\infty", False),
    ("\\boxed{\\text{east}}", "\\text{east}", True),
]

ALL_CASES = [(boxed(a), gt, ok) for a, gt, ok in BOXED_CASES] + RESPONSE_CASES


def test_enough_cases_both_ways():
    assert len(ALL_CASES) >= 150
    assert sum(ok for *_, ok in ALL_CASES) >= 60 and sum(not ok for *_, ok in ALL_CASES) >= 40


@pytest.mark.parametrize("response, ground_truth, equivalent", ALL_CASES)
def test_equivalence(response, ground_truth, equivalent):
    assert compute_math_score(response, ground_truth) == (1.0 if equivalent else 0.0)


@pytest.mark.parametrize("text, inner", [
    ("a \\boxed{\\frac{1}{\\sqrt{2}}} b", "\\frac{1}{\\sqrt{2}}"),
    ("\\boxed{1} then \\boxed{\\{2\\}}", "\\{2\\}"),
    ("\\fbox{x} after \\boxed{y}", "y"),
    ("\\boxed{y} after \\fbox{x}", "x"),
    ("\\boxed{unbalanced", None),
    ("no box", None),
])
def test_extract_boxed_handles_nesting(text, inner):
    assert extract_boxed(text) == inner


def test_extract_answer_prefers_box_then_output_section():
    assert extract_answer("[OUTPUT] the answer is 3 \\boxed{4}") == "4"
    assert extract_answer("The answer is 5. [OUTPUT]\nSo we get 6 apples") == "6"
    assert extract_answer("nothing here") is None


@pytest.mark.parametrize("raw, clean", [
    ("$x = 5$.", "5"), ("\\left(1,2\\right)", "(1,2)"), ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("45^\\circ", "45"), ("10\\%", "10"), ("1,000,000", "1000000"), ("(1,000)", "(1,000)"),
    ("5 \\text{ cm}", "5"), ("\\text{east}", "east"),
])
def test_normalize_answer(raw, clean):
    assert normalize_answer(raw) == clean


def test_bad_ground_truth_is_named():
    with pytest.raises(ValueError, match="ground truth"):
        compute_math_score("\\boxed{1}", "")


def test_grading_is_bounded_in_time():
    assert grade_math("\\boxed{2}", "2", timeout_s=60.0) == 1.0  # starts this thread's worker
    # sympy evaluates 9^(9^(9^9)) exactly and never returns; the worker is killed at the deadline.
    start = time.monotonic()
    outcome = call_bounded("math", "\\boxed{9^{9^{9^{9}}}}", "1", timeout_s=2.0)
    assert outcome.score == 0.0 and outcome.reasons == ["math_timeout"]
    assert time.monotonic() - start < 2.0 + 1.0  # deadline plus the kill and reap
    # The worker restarts and grades the next answer normally.
    assert grade_math("\\boxed{\\frac{1}{2}}", "0.5", timeout_s=60.0) == 1.0
