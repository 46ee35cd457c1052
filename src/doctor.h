/*
 * doctor.h — `eas-kcd-proxy doctor -c FILE [--user UPN] [-v]` (SPEC §2):
 * the preflight an admin runs on the DMZ host, as root, before starting
 * the daemon or when devices get 403/502/503.
 *
 * One process, one shot: it loads the configuration like -t, then does
 * what the daemon's processes would do, one check per line on stdout:
 *
 *   STATUS NAME        DETAIL[; hint: WHAT TO FIX]
 *
 * STATUS is OK, WARN, FAIL or SKIP (not configured, needs --user, or an
 * earlier check it depends on failed). Configuration errors and warnings
 * follow the config line, one per line, as -t prints them. The checks, in
 * order:
 *   config       the file loads (errors end the run: nothing else can be
 *                checked without it)
 *   file         each file the configuration names: readable, and of the
 *                right kind (PEM certificates, an unencrypted key, CRLs,
 *                a keytab, a password file)
 *   keytab-mode  who may read the keytab (keytab.h: world access is
 *                refused by the daemon too)
 *   keytab       it holds [kerberos] principal, with AES keys (WARN for
 *                RC4/DES only)
 *   clock        skew to the KDC: an AS exchange for the proxy from its
 *                keytab; the ticket's authtime (the KDC's clock) against
 *                the local clock read just before and after the exchange.
 *                WARN from 60 s, FAIL from 300 s (AD's and MIT's default
 *                tolerance) or when the KDC itself reports skew; FAIL
 *                "KDC unreachable" when no KDC answers
 *   tgt          that AS exchange gave a TGT (errors named as kcd logs
 *                them, with the fix), and it is forwardable
 *   tls-cert     the proxy's certificate: the workers' TLS context builds
 *                (key matches, client_ca and CRLs load), not expired (FAIL)
 *                or within 30 days of expiry (WARN), chain verifies
 *   client-ca    the device CAs are valid
 *   crl          CRLs are current, and every device CA has one
 *   backend      each [backend] server: TCP connect (connect_to), TLS
 *                handshake verified against [backend] ca and the host name,
 *                tls-server-end-point computable (channel bindings)
 *   user         --user UPN maps to a principal by [identity]
 *   ldap         [ldap] uri set: bind and search work (a probe name, or
 *                the --user account and the directory's decision on it)
 *   s4u2self     --user: the KDC gives the proxy a ticket for the user,
 *                forwardable (= protocol transition allowed)
 *   s4u2proxy    --user: the daemon's own Kerberos core (s4u.c, on an
 *                event_base of doctor's) gets a service ticket for the user
 *                to [backend] spn, with channel bindings as kcd would
 *   exchange     --user: Exchange accepts that ticket: an OPTIONS request
 *                to the first [server] paths entry with Authorization:
 *                Negotiate, and the mutual-authentication answer verifies
 */
#ifndef EKP_DOCTOR_H
#define EKP_DOCTOR_H

/* argv[0] is "doctor". Returns the exit status: 0 when no check failed,
 * 1 when one did, 2 for a usage error. */
int doctor_main(int argc, char **argv);

#endif
