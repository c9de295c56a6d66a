from ganctl.cli import run

run()
