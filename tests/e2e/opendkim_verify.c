/*
 * OpenDKIM's verifier (libopendkim, Debian package libopendkim-dev) against a local key table,
 * for the signet-milter end-to-end tests.
 *
 *   opendkim_verify KEYTABLE MESSAGE
 *
 * KEYTABLE has one line per public key, "<selector>._domainkey.<domain> <TXT value>", and is
 * read through libopendkim's own file query method (DKIM_QUERY_FILE, documented "for testing"),
 * so no DNS is involved. MESSAGE is a delivered message (LF or CRLF line ends).
 *
 * Prints one line per DKIM-Signature, in header order:
 *   d=<domain> s=<selector> a=<algorithm> c=<hdr>/<body>: pass
 *   d=<domain> s=<selector> a=<algorithm> c=<hdr>/<body>: FAIL (<reason>)
 * Exit status: 0 every signature passed (and there is at least one), 1 some signature failed,
 * 2 the message has no DKIM-Signature, 3 usage or I/O error.
 *
 * Why not `opendkim -t`: the daemon's test mode feeds header fields the way pre-8.14 Sendmail
 * did (leading whitespace of every value dropped, one space re-added after the colon), so it
 * reports false failures for simple header canonicalization whenever a field has a tab, no
 * space or several spaces after the colon. Handing the raw message to dkim_chunk() is exact.
 * Why not opendkim-testmsg: in verify mode it only looks keys up in DNS and prints no results.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include <dkim.h>

static const char *alg_name(DKIM_SIGINFO *sig)
{
	dkim_alg_t alg = DKIM_SIGN_UNKNOWN;

	(void) dkim_sig_getsignalg(sig, &alg);
	switch (alg) {
	case DKIM_SIGN_RSASHA1:
		return "rsa-sha1";
	case DKIM_SIGN_RSASHA256:
		return "rsa-sha256";
	case DKIM_SIGN_ED25519SHA256:
		return "ed25519-sha256";
	default:
		return "unknown";
	}
}

static const char *canon_name(dkim_canon_t c)
{
	return c == DKIM_CANON_SIMPLE ? "simple" : c == DKIM_CANON_RELAXED ? "relaxed" : "unknown";
}

static const char *str_or(const unsigned char *s, const char *fallback)
{
	return s == NULL ? fallback : (const char *) s;
}

/* Why a signature did not pass, in libopendkim's words. */
static const char *failure_reason(DKIM_SIGINFO *sig)
{
	unsigned int flags = dkim_sig_getflags(sig);
	int error = dkim_sig_geterror(sig);

	if ((flags & DKIM_SIGFLAG_PROCESSED) == 0)
		return "not processed";
	if (error != DKIM_SIGERROR_OK)
		return dkim_sig_geterrorstr(error);
	if (dkim_sig_getbh(sig) == DKIM_SIGBH_MISMATCH)
		return "body hash mismatch";
	return "signature did not verify";
}

/* Feeds the whole file to libopendkim in chunks; returns the final status. */
static DKIM_STAT feed_file(DKIM *dkim, FILE *f)
{
	unsigned char buf[65536];
	size_t n;
	DKIM_STAT status = DKIM_STAT_OK;

	while (status == DKIM_STAT_OK && (n = fread(buf, 1, sizeof buf, f)) > 0)
		status = dkim_chunk(dkim, buf, n);
	if (ferror(f))
		return DKIM_STAT_INTERNAL;
	if (status == DKIM_STAT_OK)
		status = dkim_chunk(dkim, NULL, 0);
	return status;
}

static int report(DKIM *dkim)
{
	DKIM_SIGINFO **sigs = NULL;
	int nsigs = 0;
	int failed = 0;

	if (dkim_getsiglist(dkim, &sigs, &nsigs) != DKIM_STAT_OK || nsigs == 0) {
		printf("no DKIM-Signature\n");
		return 2;
	}
	for (int i = 0; i < nsigs; i++) {
		DKIM_SIGINFO *sig = sigs[i];
		dkim_canon_t hc = DKIM_CANON_UNKNOWN, bc = DKIM_CANON_UNKNOWN;

		(void) dkim_sig_getcanons(sig, &hc, &bc);
		printf("d=%s s=%s a=%s c=%s/%s: ",
		       str_or(dkim_sig_getdomain(sig), "?"), str_or(dkim_sig_getselector(sig), "?"),
		       alg_name(sig), canon_name(hc), canon_name(bc));
		if (DKIM_SIG_CHECK(sig)) {
			printf("pass\n");
		} else {
			printf("FAIL (%s)\n", failure_reason(sig));
			failed = 1;
		}
	}
	return failed;
}

int main(int argc, char **argv)
{
	DKIM_LIB *lib;
	DKIM *dkim;
	DKIM_STAT status;
	FILE *f;
	dkim_query_t query = DKIM_QUERY_FILE;
	unsigned int flags = DKIM_LIBFLAGS_FIXCRLF;
	int rc;

	if (argc != 3) {
		fprintf(stderr, "usage: %s KEYTABLE MESSAGE\n", argv[0]);
		return 3;
	}
	f = fopen(argv[2], "rb");
	if (f == NULL) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], argv[2], strerror(errno));
		return 3;
	}
	lib = dkim_init(NULL, NULL);
	if (lib == NULL) {
		fprintf(stderr, "%s: dkim_init() failed\n", argv[0]);
		return 3;
	}
	if (dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_QUERYMETHOD, &query, sizeof query) != DKIM_STAT_OK ||
	    dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_QUERYINFO, argv[1], strlen(argv[1])) != DKIM_STAT_OK ||
	    dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof flags) != DKIM_STAT_OK) {
		fprintf(stderr, "%s: dkim_options() failed\n", argv[0]);
		return 3;
	}
	dkim = dkim_verify(lib, (const unsigned char *) "e2e", NULL, &status);
	if (dkim == NULL) {
		fprintf(stderr, "%s: dkim_verify(): %s\n", argv[0], dkim_getresultstr(status));
		return 3;
	}

	status = feed_file(dkim, f);
	fclose(f);
	/* dkim_eom() processes every signature; its own status only describes the first one, so
	 * the per-signature results are what count. NOSIG means there is nothing to report. */
	if (status == DKIM_STAT_OK)
		status = dkim_eom(dkim, NULL);
	if (status != DKIM_STAT_OK && status != DKIM_STAT_BADSIG && status != DKIM_STAT_NOSIG &&
	    status != DKIM_STAT_NOKEY && status != DKIM_STAT_CANTVRFY && status != DKIM_STAT_REVOKED) {
		printf("libopendkim error: %s (%s)\n", dkim_getresultstr(status),
		       str_or((const unsigned char *) dkim_geterror(dkim), "no detail"));
		rc = 1;
	} else {
		rc = report(dkim);
	}
	dkim_free(dkim);
	dkim_close(lib);
	return rc;
}
