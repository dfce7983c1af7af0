"""Helpers shared by the tests, imported as tests.support.X (never from a conftest module).

servers: free ports, a process run until the block ends, a real API; models: tiny models written the
way train writes them; tokens: the tests' users and their bearer tokens; pipeline: stages run in a
scratch folder; paths: where the project's files are.
"""
