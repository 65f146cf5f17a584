//! Plain-text tables: a header row and left-aligned columns as wide as their widest cell.

/// Renders `rows` under `headers`; an empty table says so.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "(none)\n".to_owned();
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `key: value` lines, keys aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$}  {v}\n", format!("{k}:")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let out = render(
            &["ID", "STATUS"],
            &[
                vec!["1".to_owned(), "Pending".to_owned()],
                vec!["12345".to_owned(), "Done".to_owned()],
            ],
        );
        assert_eq!(out, "ID     STATUS\n1      Pending\n12345  Done\n");
        assert_eq!(render(&["A"], &[]), "(none)\n");
    }

    #[test]
    fn fields_align_their_keys() {
        assert_eq!(
            fields(&[("id", "7".to_owned()), ("status", "Done".to_owned())]),
            "id:      7\nstatus:  Done\n"
        );
    }
}
