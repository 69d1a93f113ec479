# Sourced by the fixture scripts (run from the repository root): make the fixtures'
# virtualenv (.venv-fixtures) once, install the requirements file $1 into it, and set
# $venv. PyPI's torch is a CUDA build (~3 GB of nvidia wheels) but runs on the CPU,
# which is all the fixtures need.
venv=.venv-fixtures
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
fi
"$venv/bin/pip" install -q -r "$1"
