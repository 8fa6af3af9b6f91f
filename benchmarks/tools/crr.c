/* crr: TCP connect/request/response/close rate, like netperf TCP_CRR (benchmarks/suites/host_routing.py).
 *
 * Compiled at bench time with `gcc -O2 -o crr crr.c` into a temporary directory; not installed.
 *
 *   crr server IP PORT MAX_SECONDS
 *       listen on IP:PORT, print "ready"; for each connection: accept, read the request, write the
 *       response, read until the client's FIN, close. Exits by itself after MAX_SECONDS (a bound:
 *       the suite also kills it by pid).
 *   crr client IP PORT SECONDS MAX_CONNS
 *       repeat connect / write SIZE bytes / read SIZE bytes / close, serially, until SECONDS have
 *       passed or MAX_CONNS connections were made (both bounds), and print one JSON line:
 *       {"conns":N,"errors":E,"seconds":S,"rate":N/S,"p50_us":..,"p90_us":..,"p99_us":..,"last_error":..}
 *
 * The client closes first, so TIME_WAIT sits on the client side: run it with net.ipv4.tcp_tw_reuse=1
 * and a wide net.ipv4.ip_local_port_range. Request and response are 1 byte (TCP_CRR's default).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SIZE 1
#define MAX_ERRORS 1000

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int parse_addr(const char *ip, const char *port, struct sockaddr_in *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons((uint16_t)atoi(port));
	return inet_pton(AF_INET, ip, &sa->sin_addr) == 1 ? 0 : -1;
}

static int read_full(int fd, char *buf, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

static int server(const char *ip, const char *port, int max_seconds)
{
	struct sockaddr_in sa;
	char buf[64] = {0};
	int one = 1, ls;

	if (parse_addr(ip, port, &sa) < 0) {
		fprintf(stderr, "bad address %s\n", ip);
		return 2;
	}
	ls = socket(AF_INET, SOCK_STREAM, 0);
	if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 1024) < 0) {
		perror("listen");
		return 1;
	}
	alarm((unsigned)max_seconds); /* bounded even if nobody kills us */
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int c = accept(ls, NULL, NULL);

		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("accept");
			return 1;
		}
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (read_full(c, buf, SIZE) == 0 && write(c, buf, SIZE) == SIZE) {
			while (read(c, buf, sizeof(buf)) > 0) /* until the client's FIN */
				;
		}
		close(c);
	}
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static int client(const char *ip, const char *port, double seconds, long max_conns)
{
	struct sockaddr_in sa;
	char buf[SIZE] = {'x'};
	double *lat, t0, t_end, t;
	long n = 0, errors = 0;
	int one = 1, last_errno = 0;

	if (parse_addr(ip, port, &sa) < 0 || max_conns < 1) {
		fprintf(stderr, "bad arguments\n");
		return 2;
	}
	lat = malloc(sizeof(double) * (size_t)max_conns);
	if (!lat)
		return 1;
	t0 = now();
	t_end = t0 + seconds;
	t = t0;
	while (n < max_conns && t < t_end && errors < MAX_ERRORS) {
		double c0 = t;
		int fd = socket(AF_INET, SOCK_STREAM, 0);

		if (fd < 0) {
			last_errno = errno;
			errors++;
			t = now();
			continue;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || write(fd, buf, SIZE) != SIZE ||
		    read_full(fd, buf, SIZE) < 0) {
			last_errno = errno;
			errors++;
			close(fd);
			t = now();
			continue;
		}
		close(fd);
		t = now();
		lat[n++] = t - c0;
	}
	t -= t0;
	qsort(lat, (size_t)n, sizeof(double), cmp_double);
#define PCT(p) (n ? lat[(long)((p) * (double)(n - 1))] * 1e6 : 0.0)
	printf("{\"conns\":%ld,\"errors\":%ld,\"seconds\":%.6f,\"rate\":%.3f,\"p50_us\":%.3f,\"p90_us\":%.3f,"
	       "\"p99_us\":%.3f,\"last_error\":\"%s\"}\n",
	       n, errors, t, t > 0 ? n / t : 0.0, PCT(0.50), PCT(0.90), PCT(0.99),
	       last_errno ? strerror(last_errno) : "");
	free(lat);
	return n > 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc == 5 && strcmp(argv[1], "server") == 0)
		return server(argv[2], argv[3], atoi(argv[4]));
	if (argc == 6 && strcmp(argv[1], "client") == 0)
		return client(argv[2], argv[3], atof(argv[4]), atol(argv[5]));
	fprintf(stderr, "usage: crr server IP PORT MAX_SECONDS | crr client IP PORT SECONDS MAX_CONNS\n");
	return 2;
}
