//! Text tables for command output: columns padded to their widest cell, the last one not.

/// `header` and `rows` as lines, each ending in `\n`.
pub fn render<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == N - 1 {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(*header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_and_the_last_is_not_padded() {
        let rows = [
            ["example.com".to_string(), "s1".into(), "ok".into()],
            [
                "a.example".to_string(),
                "selector2".into(),
                "ERROR: x".into(),
            ],
        ];
        assert_eq!(
            super::render(&["DOMAIN", "SELECTOR", "STATUS"], &rows),
            "DOMAIN       SELECTOR   STATUS\n\
             example.com  s1         ok\n\
             a.example    selector2  ERROR: x\n"
        );
    }
}
