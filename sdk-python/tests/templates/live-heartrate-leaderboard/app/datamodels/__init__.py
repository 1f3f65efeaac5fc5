# This file makes the directory a Python package
