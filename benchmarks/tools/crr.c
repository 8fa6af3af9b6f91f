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
 *   crr echo IP PORT MAX_SECONDS
 *       listen on IP:PORT, print "ready"; serve one connection at a time: echo every RR_SIZE-byte
 *       message back until the client closes. Bounded by MAX_SECONDS like the server.
 *   crr rrmix SECONDS BLOCK NETNS IP PORT [NETNS IP PORT ...]
 *       interleaved TCP ping-pong (RR) against several echo servers, each in its own network
 *       namespace (a name under /run/netns): one connection per target, its socket made inside
 *       that namespace (setns), then in rotation r the targets in an order rotated by r, BLOCK
 *       round trips of RR_SIZE bytes each, until SECONDS have passed (or MAX_ROTATIONS). Arms
 *       measured milliseconds apart share every slow drift of the machine, so their per-rotation
 *       ratio is far tighter than separate runs seconds apart. One JSON line:
 *       {"rotations":R,"seconds":S,"targets":[{"n":..,"avg_us":..,"p50_us":..,"p99_us":..,
 *        "block_avg_us":[..R],"block_p50_us":[..R]}]}, latencies as half round trips (sockperf's).
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
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SIZE 1
#define MAX_ERRORS 1000
#define RR_SIZE 64		/* sockperf's ping-pong default is 14 B; 64 is a small RPC */
#define MAX_TARGETS 16
#define MAX_ROTATIONS 100000
#define MAX_BLOCK 10000

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

/* A listening socket on ip:port, the process bounded to @max_seconds, "ready" printed;
 * -2 for a bad address, -1 for a socket error. */
static int listen_on(const char *ip, const char *port, int backlog, int max_seconds)
{
	struct sockaddr_in sa;
	int one = 1, ls;

	if (parse_addr(ip, port, &sa) < 0) {
		fprintf(stderr, "bad address %s\n", ip);
		return -2;
	}
	ls = socket(AF_INET, SOCK_STREAM, 0);
	if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, backlog) < 0) {
		perror("listen");
		return -1;
	}
	alarm((unsigned)max_seconds); /* bounded even if nobody kills us */
	printf("ready\n");
	fflush(stdout);
	return ls;
}

static int server(const char *ip, const char *port, int max_seconds)
{
	char buf[64] = {0};
	int one = 1, ls = listen_on(ip, port, 1024, max_seconds);

	if (ls < 0)
		return -ls;
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

static int echo_server(const char *ip, const char *port, int max_seconds)
{
	char buf[RR_SIZE];
	int one = 1, ls = listen_on(ip, port, 16, max_seconds);

	if (ls < 0)
		return -ls;
	for (;;) {
		int c = accept(ls, NULL, NULL);

		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("accept");
			return 1;
		}
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		while (read_full(c, buf, RR_SIZE) == 0 && write(c, buf, RR_SIZE) == RR_SIZE)
			;
		close(c);
	}
}

/* A TCP connection to ip:port from a socket made in network namespace @ns (/run/netns/@ns). */
static int connect_in(const char *ns, const char *ip, const char *port)
{
	struct sockaddr_in sa;
	char path[512];
	int self, target, fd, one = 1;

	if (parse_addr(ip, port, &sa) < 0)
		return -1;
	snprintf(path, sizeof(path), "/run/netns/%s", ns);
	self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	target = open(path, O_RDONLY | O_CLOEXEC);
	if (self < 0 || target < 0 || setns(target, CLONE_NEWNET) < 0) {
		perror(path);
		return -1;
	}
	fd = socket(AF_INET, SOCK_STREAM, 0);	/* the socket belongs to @ns from here on */
	if (setns(self, CLONE_NEWNET) < 0) {
		perror("setns back");
		return -1;
	}
	close(self);
	close(target);
	if (fd < 0 || setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
	    connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, "connect %s:%s in %s: %s\n", ip, port, ns, strerror(errno));
		return -1;
	}
	return fd;
}

static void print_list(const double *xs, long n)
{
	putchar('[');
	for (long i = 0; i < n; i++)
		printf(i ? ",%.4f" : "%.4f", xs[i]);
	putchar(']');
}

static int rrmix(double seconds, long block, int nt, char **spec)
{
	static double blk_avg[MAX_TARGETS][MAX_ROTATIONS], blk_p50[MAX_TARGETS][MAX_ROTATIONS];
	int fds[MAX_TARGETS];
	long total[MAX_TARGETS] = {0}, cap, rot = 0;
	double *all[MAX_TARGETS], *tmp, t_end, t0;
	char buf[RR_SIZE];

	if (nt < 1 || nt > MAX_TARGETS || block < 1 || block > MAX_BLOCK) {
		fprintf(stderr, "bad arguments\n");
		return 2;
	}
	memset(buf, 'x', sizeof(buf));
	/* every sample kept for the percentiles: bounded by time, ~10 us a round trip at best */
	cap = (long)(seconds * 2e5 / nt) + block;
	tmp = malloc(sizeof(double) * (size_t)block);
	for (int i = 0; i < nt; i++) {
		fds[i] = connect_in(spec[3 * i], spec[3 * i + 1], spec[3 * i + 2]);
		all[i] = malloc(sizeof(double) * (size_t)cap);
		if (fds[i] < 0 || !all[i] || !tmp)
			return 1;
	}
	t0 = now();
	t_end = t0 + seconds;
	while (now() < t_end && rot < MAX_ROTATIONS) {
		for (int k = 0; k < nt; k++) {
			int i = (int)((k + rot) % nt);
			double sum = 0;

			for (long j = 0; j < block; j++) {
				double a = now(), rt;

				if (write(fds[i], buf, RR_SIZE) != RR_SIZE || read_full(fds[i], buf, RR_SIZE) < 0) {
					fprintf(stderr, "target %d (%s): %s\n", i, spec[3 * i + 1], strerror(errno));
					return 1;
				}
				rt = (now() - a) * 1e6 / 2;	/* half round trip, us */
				tmp[j] = rt;
				sum += rt;
				if (total[i] < cap)
					all[i][total[i]++] = rt;
			}
			qsort(tmp, (size_t)block, sizeof(double), cmp_double);
			blk_avg[i][rot] = sum / (double)block;
			blk_p50[i][rot] = tmp[block / 2];
		}
		rot++;
	}
	printf("{\"rotations\":%ld,\"seconds\":%.3f,\"block\":%ld,\"targets\":[", rot, now() - t0, block);
	for (int i = 0; i < nt; i++) {
		double sum = 0;
		long n = total[i];

		for (long j = 0; j < n; j++)
			sum += all[i][j];
		qsort(all[i], (size_t)n, sizeof(double), cmp_double);
		printf("%s{\"n\":%ld,\"avg_us\":%.4f,\"p50_us\":%.4f,\"p99_us\":%.4f,\"block_avg_us\":", i ? "," : "",
		       n, n ? sum / (double)n : 0.0, n ? all[i][n / 2] : 0.0, n ? all[i][(long)(0.99 * (double)(n - 1))] : 0.0);
		print_list(blk_avg[i], rot);
		printf(",\"block_p50_us\":");
		print_list(blk_p50[i], rot);
		putchar('}');
		close(fds[i]);
	}
	printf("]}\n");
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc == 5 && strcmp(argv[1], "server") == 0)
		return server(argv[2], argv[3], atoi(argv[4]));
	if (argc == 6 && strcmp(argv[1], "client") == 0)
		return client(argv[2], argv[3], atof(argv[4]), atol(argv[5]));
	if (argc == 5 && strcmp(argv[1], "echo") == 0)
		return echo_server(argv[2], argv[3], atoi(argv[4]));
	if (argc >= 7 && (argc - 4) % 3 == 0 && strcmp(argv[1], "rrmix") == 0)
		return rrmix(atof(argv[2]), atol(argv[3]), (argc - 4) / 3, argv + 4);
	fprintf(stderr, "usage: crr server IP PORT MAX_SECONDS | crr client IP PORT SECONDS MAX_CONNS |\n"
		"       crr echo IP PORT MAX_SECONDS | crr rrmix SECONDS BLOCK NETNS IP PORT [NETNS IP PORT ...]\n");
	return 2;
}
