/*
 * getaddrinfo times glibc's lookup of each name given, in turn, as
 * `getent ahosts` makes it (AF_UNSPEC, AI_V4MAPPED | AI_ADDRCONFIG |
 * AI_CANONNAME), and prints one line per name: the name, the microseconds
 * the lookup took, and its first address. It exits 2 at the first name that
 * does not resolve. BenchmarkGlibcLookup builds and runs it in the pod.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

int main(int argc, char **argv) {
	for (int i = 1; i < argc; i++) {
		struct addrinfo hints, *res;
		struct timespec t0, t1;
		char addr[INET6_ADDRSTRLEN] = "";
		memset(&hints, 0, sizeof hints);
		hints.ai_family = AF_UNSPEC;
		hints.ai_flags = AI_V4MAPPED | AI_ADDRCONFIG | AI_CANONNAME;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		int err = getaddrinfo(argv[i], NULL, &hints, &res);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (err != 0) {
			fprintf(stderr, "%s: %s\n", argv[i], gai_strerror(err));
			return 2;
		}
		void *a = res->ai_family == AF_INET
			? (void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr
			: (void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr;
		inet_ntop(res->ai_family, a, addr, sizeof addr);
		freeaddrinfo(res);
		long us = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000L;
		printf("%s %ld %s\n", argv[i], us, addr);
	}
	return 0;
}
