"""The oracle's specification: tests that ``reference`` computes what contract 1 says it does.

Runs without torch or numpy (tox env ``oracle-standalone``); only test_torch_agreement.py needs
torch, and it skips without it. The oracle is checked against closed forms, an independent naive
evaluator (_naive.py) and itself at a much higher starting precision.
"""
