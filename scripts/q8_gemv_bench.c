// Decoding GEMV of Q4_0 / Q4_1 / Q8_0: the f32 path (lora_gemv_abt) against the integer one
// (lora_q8_quantize + lora_q8_gemv), M = 1..8, 1 or more threads splitting the rows, plus the
// integer path's agreement with the portable reference and with the f32 product (NMSE).
// Weights cycle through copies totalling >= 512 MiB so they come from memory (one copy when N
// and K are given); each figure is the best call over ~0.7 s. Build with clang (as SwiftPM
// does; gcc -O2 keeps the kernel's small arrays on the stack) and run:
//   clang -O2 -fno-math-errno -ISources/CKernels/include -ISources/CKernels Sources/CKernels/*.c \
//       scripts/q8_gemv_bench.c -o /tmp/q8_gemv_bench -lpthread -lm
//   /tmp/q8_gemv_bench THREADS FAMILY N K      (FAMILY 0 portable, 1 avx2, 2 avx512)
//   /tmp/q8_gemv_bench THREADS FAMILY N K x8   the integer path on the _X8 layouts that
//                                              generate and serve decode with (no f32 path)
#include "CKernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <time.h>
#include <pthread.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
typedef struct {int fam,fmt,mode; long M,n0,n1,K; const float*A; const void*w; float*C; long N; int8_t*q; float*d; int32_t*s;} job;
static void* run(void*p){job*j=p; if(j->mode) lora_q8_gemv(j->fam,j->fmt,j->M,j->n0,j->n1,j->K,j->q,j->d,j->s,j->w,j->K,j->C,j->N,0); else lora_gemv_abt(j->fam,j->fmt,j->M,j->n0,j->n1,j->K,j->A,j->K,j->w,j->K,NULL,j->C,j->N,0);return 0;}
int main(int argc,char**argv){
 int threads=argc>1?atoi(argv[1]):1; int fam=argc>2?atoi(argv[2]):lora_family_best();
 long N=argc>3?atol(argv[3]):11008,K=argc>4?atol(argv[4]):4096; int fmts[]={LORA_FORMAT_Q4_0,LORA_FORMAT_Q4_1,LORA_FORMAT_Q8_0};
 int x8=argc>5&&argv[5][0]=='x', x8fmts[]={LORA_FORMAT_Q4_0_X8,LORA_FORMAT_Q4_1_X8,LORA_FORMAT_Q8_0_X8}; long bb[]={18,20,34}; const char*nm[]={"q4_0","q4_1","q8_0"};
 for(int f=0;f<3;f++){ size_t bytes=N*K/32*bb[f]; int copies=argc>3?1:(int)(512.0*1024*1024/bytes)+1; void**w=malloc(sizeof(void*)*copies);
  for(int c=0;c<copies;c++){unsigned char*b=malloc(bytes);for(size_t i=0;i<bytes;i++)b[i]=(unsigned char)((i*2654435761u)>>13);for(size_t o=0;o<bytes;o+=bb[f]){b[o]=(o*7)&255;b[o+1]=0x20;if(f==1){b[o+2]=(o*3)&255;b[o+3]=0xA0;}}w[c]=b;
   if(x8){void*p=malloc(bytes);lora_q8x8_pack(fmts[f],N,K,b,p);free(b);w[c]=p;}}
  if(x8) fmts[f]=x8fmts[f];
  float*A=malloc(sizeof(float)*8*K),*C=malloc(sizeof(float)*8*N),*C2=malloc(sizeof(float)*8*N),*C3=malloc(sizeof(float)*8*N); for(long i=0;i<8*K;i++)A[i]=sinf(i*0.37f)*(1+(i%7));
  int8_t*q=malloc(8*K); float*d=malloc(sizeof(float)*8*K/32); int32_t*s=malloc(sizeof(int32_t)*8*K/32); lora_q8_quantize(fam,8,K,A,K,q,d,s);
  // accuracy vs f32 path and vs portable
  if(x8) lora_q8_gemv(0,fmts[f],8,0,N,K,q,d,s,w[0],K,C,N,0); else lora_gemv_abt(fam,fmts[f],8,0,N,K,A,K,w[0],K,NULL,C,N,0);
  lora_q8_gemv(fam,fmts[f],8,0,N,K,q,d,s,w[0],K,C2,N,0); lora_q8_gemv(0,fmts[f],8,0,N,K,q,d,s,w[0],K,C3,N,0);
  double e2=0,n2=0,e3=0,e4=0,e5=0; for(long i=0;i<8*N;i++){e2+=(C2[i]-C[i])*(double)(C2[i]-C[i]);n2+=C[i]*(double)C[i]; double r=fabs(C2[i]-C3[i])/(fabs(C3[i])+1e-3); if(r>e3)e3=r; e4+=(C3[i]-C[i])*(double)(C3[i]-C[i]); e5+=(C2[i]-C3[i])*(double)(C2[i]-C3[i]);}
  if(x8) printf("(x8: \"f32\" below is the portable integer path)\n");
  printf("%s nmse vs f32 %.2e, max rel vs portable %.2e, portable nmse vs f32 %.2e, simd vs portable nmse %.2e\n",nm[f],e2/n2,e3,e4/n2,e5/n2);
  for(int mode=x8;mode<2;mode++) for(long M=1;M<=8;M*=2){ double best=1e30,st=now(); for(int r=0,c=0;r<3||now()-st<0.7;r++,c=(c+1)%copies){ double t0=now(); pthread_t th[8]; job j[8]; long per=(N/16+threads-1)/threads*16;

    for(int t=0;t<threads;t++){ long n0=t*per,n1=(t+1)*per<N?(t+1)*per:N; j[t]=(job){fam,fmts[f],mode,M,n0,n1,K,A,w[c],C,N,q,d,s}; if(t) pthread_create(&th[t],0,run,&j[t]);} run(&j[0]); for(int t=1;t<threads;t++)pthread_join(th[t],0);
    double t=now()-t0; if(t<best)best=t;}
   printf("%s %s M=%ld threads=%d: %.2f GB/s, %.1f GMAC/s, %.1f us\n",nm[f],mode?"q8  ":"f32 ",M,threads,bytes/best/1e9,M*N*K/best/1e9,best*1e6);}
 }
}
