//! Manual pages generated from the command-line definition, so that they never disagree with
//! `--help`: `signet-milter man --out DIR` writes signet-milter.8 and one page per command
//! (signet-milter-check.8, …), the way git and cargo do it. The configuration file's page,
//! signet-milter.toml(5), is written by hand: packaging/signet-milter.toml.5.

use clap_mangen::Man;
use std::io::Write as _;
use std::path::{Path, PathBuf};

const SECTION: &str = "8";
const MANUAL: &str = "System Manager's Manual";

/// What clap cannot know: signals, files, exit status, related pages (roff).
const MAIN_PAGE_TAIL: &str = r#".SH SIGNALS
.TP
.B SIGHUP
Reload the configuration. A file that does not load is logged and the running configuration
stays; messages in flight finish with the rules they started with.
.TP
.BR SIGTERM ", " SIGINT
Stop: stop accepting connections and remove the unix socket at once, let the messages in flight
finish for up to \fB[milter] shutdown_timeout\fR (30 s by default), close the remaining
connections, exit 0.
.SH SYSTEMD
The unit runs the milter as \fBType=notify\fR: it reports ready once the socket is bound and every
key has been tried, reloading around \fBSIGHUP\fR (\fBsystemctl reload signet-milter\fR) and
stopping at shutdown. When stderr is the journal, log lines carry their syslog priority and no
timestamp of their own.
.SH FILES
.TP
.I /etc/signet-milter/signet-milter.toml
The configuration; see \fBsignet-milter.toml\fR(5).
.TP
.I /etc/signet-milter/keys/
Private keys, by default \fIDOMAIN\fB/\fISELECTOR\fB.key\fR, mode 0600, owned by the
\fBsignet-milter\fR user.
.TP
.I /var/lib/signet-milter/
Key rotation: its state (\fBrotation/\fR, one JSON file per rotated signature, and
\fIDOMAIN\fB/records.zone\fR, the records DNS should hold), archived keys
(\fBrotation/archive/\fR), and the keys it generates where the configuration puts them there.
.TP
.I /run/signet-milter/signet-milter.sock
The default milter socket.
.SH ENVIRONMENT
.TP
.B SIGNET_LOG
A log level or filter that overrides \fB[log] level\fR, e.g. \fBdebug\fR; a value that is no
level is ignored with a warning.
.TP
.B NO_COLOR
No colours in log output at a terminal.
.SH EXIT STATUS
0 on success (also after \fBSIGTERM\fR), 1 on any error; \fBcheck\fR exits 1 when any key, or
with \fB\-\-dns\fR any published record, is not right; \fBverify\fR exits 1 unless the message
has a signature and every one (of \fB\-\-domain\fR, if given) passes; \fBexplain\fR exits 0
when the message would be signed, 1 when it would not (or would be refused), 2 on an error.
.SH SEE ALSO
\fBsignet-milter.toml\fR(5), \fBpostconf\fR(5) (\fBsmtpd_milters\fR), \fBsystemctl\fR(1)
"#;

/// Writes every page of the command line `cmd` into `dir`; returns their paths. The caller
/// passes its `clap::Command`, so this module knows nothing of the CLI's types.
pub fn write_pages(mut cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    // Gives every subcommand its display name, "signet-milter-check", and adds `help`, which
    // needs no page of its own.
    cmd.build();
    let cmd = cmd.mut_subcommand("help", |help| help.hide(true));
    let mut written = vec![write_main_page(dir, cmd.clone())?];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = Man::new(sub.clone()).section(SECTION).manual(MANUAL);
        written.push(man.generate_to(dir)?);
    }
    Ok(written)
}

fn write_main_page(dir: &Path, cmd: clap::Command) -> std::io::Result<PathBuf> {
    let man = Man::new(cmd).section(SECTION).manual(MANUAL);
    let path = dir.join(man.get_filename());
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    out.write_all(MAIN_PAGE_TAIL.as_bytes())?;
    man.render_version_section(&mut out)?;
    out.flush()?;
    Ok(path)
}
