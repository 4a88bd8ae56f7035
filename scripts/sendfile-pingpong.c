// Request/response over loopback TCP: a thread answers each 8-byte request with
// SIZE bytes from a 16-slot memfd, by write() from its mapping (MODE 0) or by
// sendfile() from the memfd (MODE 1); the client recv()s each answer into a buffer.
// BUF=n in the environment sets SO_SNDBUF (server) and SO_RCVBUF (client).
//   cc -O2 -pthread scripts/sendfile-pingpong.c -o /tmp/sendfile-pingpong
//   /tmp/sendfile-pingpong SIZE MODE SECONDS     (e.g. 1048576 1 1)
// See BENCHMARKS.md section 4.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
static size_t SIZE; static int MODE; static int memfd; static char *map; static int lfd; static int port;
#define SLOTS 16
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void *server(void*a){
  int c=accept(lfd,0,0); int one=1; if(getenv("BUF")){int b=atoi(getenv("BUF")); setsockopt(c,SOL_SOCKET,SO_SNDBUF,&b,4);} setsockopt(c,IPPROTO_TCP,TCP_NODELAY,&one,4);
  unsigned long req;
  for(;;){ size_t got=0; while(got<8){ssize_t n=read(c,((char*)&req)+got,8-got); if(n<=0) return 0; got+=n;}
    off_t off=(req%SLOTS)*SIZE; size_t left=SIZE;
    if(MODE==0){ char*p=map+off; while(left){ssize_t n=write(c,p,left); if(n<=0) return 0; p+=n; left-=n;} }
    else { while(left){ssize_t n=sendfile(c,memfd,&off,left); if(n<=0){perror("sendfile");return 0;} left-=n;} }
  }
}
int main(int argc,char**argv){
  SIZE=strtoul(argv[1],0,0); MODE=atoi(argv[2]); double dur=atof(argv[3]);
  memfd=memfd_create("arena",0); ftruncate(memfd,SIZE*SLOTS);
  map=mmap(0,SIZE*SLOTS,PROT_READ|PROT_WRITE,MAP_SHARED,memfd,0); memset(map,7,SIZE*SLOTS);
  lfd=socket(AF_INET,SOCK_STREAM,0); struct sockaddr_in a={.sin_family=AF_INET,.sin_addr.s_addr=htonl(0x7f000001)};
  bind(lfd,(void*)&a,sizeof a); listen(lfd,1); socklen_t l=sizeof a; getsockname(lfd,(void*)&a,&l);
  pthread_t t; pthread_create(&t,0,server,0);
  int c=socket(AF_INET,SOCK_STREAM,0); if(getenv("BUF")){int b=atoi(getenv("BUF")); setsockopt(c,SOL_SOCKET,SO_RCVBUF,&b,4);} connect(c,(void*)&a,sizeof a); int one=1; setsockopt(c,IPPROTO_TCP,TCP_NODELAY,&one,4);
  char*buf=malloc(SIZE); unsigned long i=0; double t0=now(),end=t0+dur; long n=0;
  double *lat=malloc(sizeof(double)*1000000);
  while(now()<end){ double s=now(); write(c,&i,8); i++; size_t got=0; while(got<SIZE){ssize_t r=recv(c,buf+got,SIZE-got,0); if(r<=0){perror("recv");return 1;} got+=r;} lat[n++]=now()-s; }
  double el=now()-t0;
  // median latency
  int cmp(const void*x,const void*y){double d=*(double*)x-*(double*)y;return d<0?-1:d>0;}
  qsort(lat,n,sizeof(double),cmp);
  printf("size %zu mode %s: %.2f GB/s p50 %.1f us\n",SIZE,MODE?"sendfile":"write",n*SIZE/el/1e9,lat[n/2]*1e6);
  return 0;
}
