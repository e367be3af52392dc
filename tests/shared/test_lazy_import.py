import subprocess
import sys


def test_a_lazy_module_loads_on_first_attribute_access():
    # A fresh interpreter, so the module is certainly not loaded yet.
    code = (
        "import sys\n"
        "from fedge.shared.lazy_import import lazy_module\n"
        "decimal = lazy_module('decimal')\n"
        "print('decimal' in sys.modules, repr(decimal))\n"
        "print(decimal.Decimal('1.5') * 2, 'decimal' in sys.modules, repr(decimal))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [
        "False <lazy module 'decimal' (not loaded yet)>",
        "3.0 True <lazy module 'decimal' (loaded)>",
    ]
