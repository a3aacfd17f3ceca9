from homepool.cli import run

run()
