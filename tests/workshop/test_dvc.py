"""carbench.workshop.dvc: another tool's failure worded by its own error line."""
from __future__ import annotations




def test_tool_error_is_the_error_line_of_dvc():
    from carbench.workshop.dvc import tool_error

    stderr = "ERROR: unknown Git revision 'nope'\n\nHaving any troubles? Hit us up at https://dvc.org/support\n"
    assert tool_error(stderr) == "ERROR: unknown Git revision 'nope'"
    assert tool_error("something\nbroke\n") == "broke" and tool_error("") == "(no message)"


