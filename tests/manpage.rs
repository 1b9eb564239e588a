//! `signet-milter man --out DIR` (hidden; used by packaging/build-packages.sh) writes the manual
//! pages from the command-line definition: one for the program, one per visible command.

use std::process::Command;

#[test]
fn man_writes_a_page_per_command_from_the_cli_definition() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_signet-milter"))
        .args(["man", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(
        pages,
        [
            "signet-milter-check.8",
            "signet-milter-explain.8",
            "signet-milter-keygen.8",
            "signet-milter-rotate.8",
            "signet-milter-run.8",
            "signet-milter-sign.8",
            "signet-milter-verify.8",
            "signet-milter.8",
        ],
        "the hidden man command gets no page"
    );
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let main = read("signet-milter.8");
    assert!(main.contains("\n.TH signet-milter 8 "), "{main}");
    for section in [
        ".SH SYNOPSIS",
        ".SH OPTIONS",
        ".SH SUBCOMMANDS",
        ".SH SIGNALS",
        ".SH FILES",
        ".SH SEE ALSO",
    ] {
        assert!(main.contains(section), "{section} missing:\n{main}");
    }
    assert!(main.contains("signet\\-milter\\-check(8)"), "{main}");
    assert!(!main.contains("man("), "the hidden command is not listed");
    // Options come from clap: what `--help` says is what the page says.
    let check = read("signet-milter-check.8");
    assert!(check.contains("\\-\\-dns\\-server"), "{check}");
    assert!(check.contains("instead of the system"), "{check}");
    let keygen = read("signet-milter-keygen.8");
    assert!(
        keygen.contains("ed25519"),
        "possible values listed: {keygen}"
    );
}
