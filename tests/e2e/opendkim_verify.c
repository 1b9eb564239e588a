/*
 * OpenDKIM's verifier (libopendkim, Debian package libopendkim-dev) against a local key table,
 * for the signet-milter end-to-end tests.
 *
 *   opendkim_verify KEYTABLE MESSAGE
 *   opendkim_verify --dns IPV4:PORT MESSAGE
 *
 * KEYTABLE has one line per public key, "<selector>._domainkey.<domain> <TXT value>", and is
 * read through libopendkim's own file query method (DKIM_QUERY_FILE, documented "for testing"),
 * so no DNS is involved. With --dns, keys are looked up in DNS, asking only the server at
 * IPV4:PORT (a test's own authoritative server on an ephemeral port): libopendkim's query
 * hooks (dkim_dns_set_query_start/waitreply) send each query there with the system resolver
 * library (res_nsend, UDP then TCP on truncation). MESSAGE is a delivered message (LF or CRLF
 * line ends). Build: cc … $(pkg-config --cflags --libs opendkim) -lresolv
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

#include <arpa/inet.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdlib.h>

#include <dkim.h>

/* --dns: the one server asked, and the answer of the query in progress (libopendkim asks one
 * key at a time, so a synchronous query in query_start is enough). */
static struct __res_state dns_state;
static int dns_answer_len;

static int cname_depth;

/* Whether the answer holds a CNAME and no TXT; the CNAME's target goes into `target`. */
static bool cname_only(const unsigned char *answer, int len, char *target, size_t size)
{
	ns_msg msg;
	ns_rr rr;
	bool cname = false;

	if (ns_initparse(answer, len, &msg) != 0)
		return false;
	for (int i = 0; i < ns_msg_count(msg, ns_s_an); i++) {
		if (ns_parserr(&msg, ns_s_an, i, &rr) != 0)
			return false;
		if (ns_rr_type(rr) == ns_t_txt)
			return false;
		if (ns_rr_type(rr) == ns_t_cname &&
		    ns_name_uncompress(ns_msg_base(msg), ns_msg_end(msg), ns_rr_rdata(rr), target,
		                       size) >= 0)
			cname = true;
	}
	return cname;
}

static int dns_query_start(void *srv, int type, unsigned char *query, unsigned char *buf,
                           size_t buflen, void **qh)
{
	unsigned char packet[NS_PACKETSZ];
	int n;

	(void) srv;
	n = res_nmkquery(&dns_state, ns_o_query, (const char *) query, ns_c_in, type, NULL, 0,
	                 NULL, packet, sizeof packet);
	if (n < 0)
		return DKIM_DNS_ERROR;
	/* The whole answer, NXDOMAIN included, for libopendkim to read its rcode. */
	dns_answer_len = res_nsend(&dns_state, packet, n, buf, (int) buflen);
	if (dns_answer_len < 0)
		return DKIM_DNS_ERROR;
	/* An answer that is only a CNAME (its target in another zone) is followed, as a
	 * recursive resolver would: the two-selector CNAME model. */
	char target[NS_MAXDNAME];
	if (type == ns_t_txt && cname_only(buf, dns_answer_len, target, sizeof target) &&
	    cname_depth < 8) {
		int rc;
		cname_depth++;
		rc = dns_query_start(srv, type, (unsigned char *) target, buf, buflen, qh);
		cname_depth--;
		return rc;
	}
	*qh = &dns_answer_len;
	return DKIM_DNS_SUCCESS;
}

static int dns_query_cancel(void *srv, void *qh)
{
	(void) srv;
	(void) qh;
	return DKIM_DNS_SUCCESS;
}

static int dns_query_waitreply(void *srv, void *qh, struct timeval *timeout, size_t *bytes,
                               int *error, int *dnssec)
{
	(void) srv;
	(void) timeout;
	*bytes = (size_t) *(int *) qh;
	if (error != NULL)
		*error = 0;
	if (dnssec != NULL)
		*dnssec = DKIM_DNSSEC_UNKNOWN;
	return DKIM_DNS_SUCCESS;
}

/* dns_state is static: libopendkim must not free it at dkim_close(). */
static void dns_close(void *srv)
{
	(void) srv;
}

/* Points dns_state at IPV4:PORT; returns 0 on success. */
static int use_dns_server(DKIM_LIB *lib, const char *server)
{
	char host[64];
	const char *colon = strrchr(server, ':');
	size_t hostlen;
	long port;

	if (colon == NULL || (hostlen = (size_t) (colon - server)) >= sizeof host)
		return -1;
	memcpy(host, server, hostlen);
	host[hostlen] = '\0';
	port = strtol(colon + 1, NULL, 10);
	if (port <= 0 || port > 65535 || res_ninit(&dns_state) != 0)
		return -1;
	dns_state.nscount = 1;
	dns_state.nsaddr_list[0].sin_family = AF_INET;
	dns_state.nsaddr_list[0].sin_port = htons((unsigned short) port);
	if (inet_pton(AF_INET, host, &dns_state.nsaddr_list[0].sin_addr) != 1)
		return -1;
	dns_state.retry = 2;
	dns_state.retrans = 2;
	dkim_dns_set_query_service(lib, &dns_state);
	dkim_dns_set_query_start(lib, dns_query_start);
	dkim_dns_set_query_cancel(lib, dns_query_cancel);
	dkim_dns_set_query_waitreply(lib, dns_query_waitreply);
	dkim_dns_set_close(lib, dns_close);
	return 0;
}

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

	bool dns = argc == 4 && strcmp(argv[1], "--dns") == 0;
	const char *message = dns ? argv[3] : argv[2];

	if (argc != 3 && !dns) {
		fprintf(stderr, "usage: %s KEYTABLE MESSAGE\n       %s --dns IPV4:PORT MESSAGE\n",
		        argv[0], argv[0]);
		return 3;
	}
	f = fopen(message, "rb");
	if (f == NULL) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], message, strerror(errno));
		return 3;
	}
	lib = dkim_init(NULL, NULL);
	if (lib == NULL) {
		fprintf(stderr, "%s: dkim_init() failed\n", argv[0]);
		return 3;
	}
	if (dns) {
		query = DKIM_QUERY_DNS;
		if (use_dns_server(lib, argv[2]) != 0) {
			fprintf(stderr, "%s: --dns %s: want IPV4:PORT\n", argv[0], argv[2]);
			return 3;
		}
	}
	if (dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_QUERYMETHOD, &query, sizeof query) != DKIM_STAT_OK ||
	    (!dns && dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_QUERYINFO, argv[1], strlen(argv[1])) != DKIM_STAT_OK) ||
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
