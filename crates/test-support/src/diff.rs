//! A line diff for tests that compare a document's block with real output (docs.rs, the README
//! guest run of qemu_readme.rs).

/// A line diff (`-` old, `+` new, two spaces for a common line), by longest common subsequence.
pub fn line_diff(old: &[&str], new: &[&str]) -> String {
    let (n, m) = (old.len(), new.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if old[i] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && old[i] == new[j] {
            out += &format!("  {}\n", old[i]);
            (i, j) = (i + 1, j + 1);
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out += &format!("+ {}\n", new[j]);
            j += 1;
        } else {
            out += &format!("- {}\n", old[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diff_marks_removed_added_and_common_lines() {
        assert_eq!(
            line_diff(&["a", "b", "c"], &["a", "x", "c"]),
            "  a\n+ x\n- b\n  c\n"
        );
        assert_eq!(line_diff(&[], &["n"]), "+ n\n");
    }
}
